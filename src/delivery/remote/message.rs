//! What the client needs to know about a stored message before it talks
//! to anyone: how many `Received:` fields it carries (loop protection),
//! whether it has 8-bit octets (BODY=8BITMIME), and whether it was
//! received with SMTPUTF8.

/// The header section: up to and including the first empty line.
fn header(body: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(body, b"\r\n\r\n").map_or(body.len(), |i| i + 2);
    &body[..end]
}

/// Header field lines (continuations belong to the field before).
fn fields(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    header(body)
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b' ' && l[0] != b'\t')
}

/// The number of `Received:` header fields.
pub fn received_count(body: &[u8]) -> usize {
    fields(body)
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// True when any octet has the high bit set.
pub fn has_8bit(body: &[u8]) -> bool {
    body.iter().any(|&b| b >= 0x80)
}

/// True when our own `Received:` field (the first) records that the message
/// came in with SMTPUTF8: RFC 6531 §4.3 names that protocol `UTF8SMTP`
/// (`UTF8SMTPS`, `UTF8SMTPA`, `UTF8SMTPSA`). The queue record keeps the
/// RFC 3461 parameters but not this one, and the field says it reliably:
/// the session writes it from the MAIL parameters.
pub fn received_with_smtputf8(body: &[u8]) -> bool {
    let h = header(body);
    let Some(start) = memchr::memmem::find(h, b"Received:") else {
        return false;
    };
    // The field runs until a line that does not start with white space.
    let mut end = h.len();
    let mut i = start;
    while let Some(nl) = memchr::memchr(b'\n', &h[i..]).map(|n| i + n) {
        if h.get(nl + 1).is_none_or(|&c| c != b' ' && c != b'\t') {
            end = nl;
            break;
        }
        i = nl + 1;
    }
    memchr::memmem::find(&h[start..end], b" with UTF8SMTP").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from a ([127.0.0.1])\r\n\tby mx.test (wasmtp) with UTF8SMTPS id X;\r\n\tdate\r\nreceived: from b\r\nSubject: Received: no\r\n\r\nReceived: in the body\r\n\xc3\xa9\r\n";

    #[test]
    fn inspects_the_header() {
        assert_eq!(received_count(MSG), 2);
        assert!(has_8bit(MSG));
        assert!(received_with_smtputf8(MSG));
        let plain = b"Received: from a\r\n\tby mx.test (wasmtp) with ESMTP id X;\r\nX-Note: with UTF8SMTP\r\n\r\nbody\r\n";
        assert!(!received_with_smtputf8(plain));
        assert!(!has_8bit(plain));
        assert_eq!(received_count(b"Subject: x\r\n\r\n"), 0);
        assert_eq!(received_count(b""), 0);
    }
}
