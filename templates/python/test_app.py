"""Native tests: `./build.sh test` runs them under plain python3 with a fake host (no server, no
component build)."""

import unittest

from wasmtp_plugin.testing import Err, FakeHost

import app


def run(config, authenticated=None):
    host = FakeHost()
    conn = host.connection(peer_ip="192.0.2.1", helo="mail.example.org", authenticated=authenticated)
    env = host.envelope("a@example.org", ["b@example.net"])
    msg = host.message(b"Subject: hi\r\n\r\nhello\r\n")
    return host.call(app.Tagger, "data", conn, env, msg, config=config)


class TaggerTest(unittest.TestCase):
    def test_adds_the_header(self):
        out = run({})
        self.assertEqual(len(out.modifications), 1)
        header = out.modifications[0].value
        self.assertEqual((header.name, header.value),
                         ("X-{{name}}", "from 192.0.2.1 helo mail.example.org"))

    def test_skips_authenticated_clients_when_asked(self):
        self.assertEqual(run({"skip_authenticated": True}, authenticated="alice").modifications, [])
        self.assertEqual(len(run({"skip_authenticated": True}).modifications), 1)

    def test_refuses_a_bad_config(self):
        for bad in ({"header": "a b"}, {"heder": "X-A"}, {"skip_authenticated": "yes"}):
            with self.assertRaises(Err):
                FakeHost().init(app.Tagger, bad)


if __name__ == "__main__":
    unittest.main()
