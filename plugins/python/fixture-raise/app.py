"""fixture-raise: a test fixture, not an example. It raises an exception at `mail-from` when the
sender's local part is `raise`, so a test can check that the SDK logs the exception's text with
the plugin's name before the call traps."""

from wasmtp_plugin import Plugin


def check(sender: str) -> None:
    if sender.split("@", 1)[0] == "raise":
        raise ValueError(f"fixture-raise: deliberate failure for {sender}")


class FixtureRaise(Plugin):
    name = "fixture-raise"

    def mail_from(self, conn, sender, params):
        check(sender)


Hooks = FixtureRaise.export()
