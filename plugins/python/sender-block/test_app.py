"""Native tests: `sdk/python/build.sh test plugins/python/sender-block --sdk sdk/python --wit wit`
(plugins/build-python.sh runs them before building)."""

import unittest

from wasmtp_plugin.testing import Err, FakeHost

import app


class SenderBlockTest(unittest.TestCase):
    def mail(self, host, sender, config):
        return host.call(app.SenderBlock, "mail_from", host.connection(), sender, [], config=config)

    def test_refuses_a_listed_domain(self):
        host = FakeHost()
        out = self.mail(host, "bad@Spam.Example", {"domains": ["spam.example"]})
        self.assertEqual(type(out.verdict).__name__, "Verdict_Reject")
        self.assertEqual(out.verdict.value.code, 550)
        self.assertIn("spam.example", out.verdict.value.text)
        self.assertEqual(host.notes["sender-block.refused"], "bad@Spam.Example")
        self.assertEqual(host.logs, [("info", "sender-block: refusing bad@Spam.Example")])

    def test_lets_others_through(self):
        out = self.mail(FakeHost(), "good@example.test", {"domains": ["spam.example"]})
        self.assertEqual(type(out.verdict).__name__, "Verdict_Continue")
        self.assertEqual(out.modifications, [])

    def test_refuses_an_unknown_key(self):
        with self.assertRaises(Err) as e:
            FakeHost().init(app.SenderBlock, {"domain": ["spam.example"]})
        self.assertIn("unknown config key `domain`", e.exception.value)

    def test_refuses_a_wrong_type(self):
        with self.assertRaises(Err) as e:
            FakeHost().init(app.SenderBlock, {"domains": "spam.example"})
        self.assertIn("config key `domains`: expected a list, got a string", e.exception.value)


if __name__ == "__main__":
    unittest.main()
