//! `Authentication-Results` fields in a received message: the ones that
//! claim our authserv-id were not written by us (we add ours after this
//! runs), so RFC 8601 §5 has them removed before ours is added; a
//! reader or a plugin trusting "results from mx.example.org" must only
//! ever see results we computed.

/// Appends `message` to `out` without the `Authentication-Results` fields
/// of its header block whose authserv-id is `authserv_id` (compared
/// case-insensitively); returns how many were left out. The body is never
/// looked at.
pub fn append_without_ours(out: &mut Vec<u8>, message: &[u8], authserv_id: &str) -> usize {
    out.reserve(message.len());
    let mut removed = 0;
    let mut pos = 0;
    while pos < message.len() {
        let end = field_end(message, pos);
        let field = &message[pos..end];
        if field == b"\r\n" || field == b"\n" {
            // The blank line: the rest is body.
            break;
        }
        if authserv_id_of(field).is_some_and(|id| id.eq_ignore_ascii_case(authserv_id)) {
            removed += 1;
        } else {
            out.extend_from_slice(field);
        }
        pos = end;
    }
    out.extend_from_slice(&message[pos..]);
    removed
}

/// Where our own fields go: right below the first field of the message,
/// which is the `Received` field this server wrote (the session starts
/// every message with it). So `Received` stays the first line, as plugins
/// and the queue id in it expect, and our results still sit above every
/// field that came from outside (Postfix places a milter's
/// Authentication-Results and DKIM-Signature the same way).
pub fn below_first_field(message: &[u8]) -> usize {
    if message.is_empty() {
        return 0;
    }
    field_end(message, 0)
}

/// `message` with `fields` inserted where [`below_first_field`] says.
pub fn insert_below_first_field(message: Vec<u8>, fields: &[u8]) -> Vec<u8> {
    let at = below_first_field(&message);
    let mut out = Vec::with_capacity(message.len() + fields.len());
    out.extend_from_slice(&message[..at]);
    out.extend_from_slice(fields);
    out.extend_from_slice(&message[at..]);
    out
}

/// Where the field starting at `start` ends: after its last line,
/// continuation lines (starting with a space or tab) included.
fn field_end(m: &[u8], start: usize) -> usize {
    let mut pos = start;
    loop {
        pos = match memchr::memchr(b'\n', &m[pos..]) {
            Some(i) => pos + i + 1,
            None => return m.len(),
        };
        if pos == start + 2 && &m[start..pos] == b"\r\n" || pos == start + 1 {
            return pos;
        }
        if !matches!(m.get(pos), Some(b' ' | b'\t')) {
            return pos;
        }
    }
}

/// The authserv-id of an `Authentication-Results` field, if `field` is one:
/// the first value after optional comments and white space (RFC 8601 §2.2),
/// a token or a quoted string.
fn authserv_id_of(field: &[u8]) -> Option<String> {
    let colon = memchr::memchr(b':', field)?;
    let name = std::str::from_utf8(&field[..colon]).ok()?.trim_end();
    if !name.eq_ignore_ascii_case("Authentication-Results") {
        return None;
    }
    let value = &field[colon + 1..];
    let mut i = 0;
    let mut depth = 0usize;
    // Skip CFWS: white space, line breaks and (nested) comments.
    while i < value.len() {
        match value[i] {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let rest = value.get(i..)?;
    let id: Vec<u8> = if rest.first() == Some(&b'"') {
        let mut id = Vec::new();
        let mut j = 1;
        while j < rest.len() && rest[j] != b'"' {
            if rest[j] == b'\\' {
                j += 1;
            }
            if let Some(c) = rest.get(j) {
                id.push(*c);
            }
            j += 1;
        }
        id
    } else {
        rest.iter()
            .take_while(|c| !matches!(c, b';' | b'(' | b' ' | b'\t' | b'\r' | b'\n'))
            .copied()
            .collect()
    };
    String::from_utf8(id).ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "mx.example.org";

    fn strip(m: &str) -> (String, usize) {
        let mut out = Vec::new();
        let n = append_without_ours(&mut out, m.as_bytes(), OURS);
        (String::from_utf8(out).unwrap(), n)
    }

    #[test]
    fn authserv_ids() {
        let table: &[(&str, Option<&str>)] = &[
            (
                "Authentication-Results: mx.example.org; spf=pass\r\n",
                Some("mx.example.org"),
            ),
            (
                "authentication-results:mx.example.org;none\r\n",
                Some("mx.example.org"),
            ),
            (
                "Authentication-Results : (c) mx.example.org 1; none\r\n",
                Some("mx.example.org"),
            ),
            (
                "Authentication-Results: (a (nested) comment)\r\n\tMX.Example.Org;\r\n\tdkim=pass\r\n",
                Some("MX.Example.Org"),
            ),
            (
                "Authentication-Results: \"mx.example.org\"; none\r\n",
                Some("mx.example.org"),
            ),
            (
                "Authentication-Results: other.example; spf=pass\r\n",
                Some("other.example"),
            ),
            ("Authentication-Results:\r\n", None),
            ("X-Authentication-Results: mx.example.org; none\r\n", None),
            ("Subject: Authentication-Results: mx.example.org\r\n", None),
        ];
        for (field, want) in table {
            assert_eq!(
                authserv_id_of(field.as_bytes()).as_deref(),
                *want,
                "{field:?}"
            );
        }
    }

    #[test]
    fn removes_only_ours_from_the_header_block() {
        let m = "Received: from a\r\n\tby b\r\n\
                 Authentication-Results: mx.example.org;\r\n\tdkim=pass header.d=forged.example\r\n\
                 Authentication-Results: upstream.example; spf=pass\r\n\
                 AUTHENTICATION-RESULTS: MX.EXAMPLE.ORG; dmarc=pass\r\n\
                 Subject: hi\r\n\
                 \r\n\
                 Authentication-Results: mx.example.org; in the body stays\r\n";
        let (out, n) = strip(m);
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "Received: from a\r\n\tby b\r\n\
             Authentication-Results: upstream.example; spf=pass\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.example.org; in the body stays\r\n"
        );
    }

    #[test]
    fn our_fields_go_below_the_first_one() {
        let m = b"Received: from a\r\n\tby b\r\nSubject: x\r\n\r\nbody\r\n".to_vec();
        let out = insert_below_first_field(m, b"Authentication-Results: x; none\r\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from a\r\n\tby b\r\nAuthentication-Results: x; none\r\nSubject: x\r\n\r\nbody\r\n"
        );
        assert_eq!(
            insert_below_first_field(Vec::new(), b"A: b\r\n"),
            b"A: b\r\n"
        );
    }

    #[test]
    fn a_message_without_a_body_or_final_newline() {
        assert_eq!(strip("Subject: x\r\n"), ("Subject: x\r\n".into(), 0));
        assert_eq!(
            strip("Subject: x\r\nAuthentication-Results: mx.example.org; none"),
            ("Subject: x\r\n".into(), 1)
        );
        assert_eq!(strip(""), (String::new(), 0));
    }
}
