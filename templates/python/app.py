"""{{name}}: a wasmtp policy plugin in Python. At the data hook it adds a header field that
records where the message came from (`X-{{name}}: from 192.0.2.1 helo mail.example.org`),
unless the client authenticated and `skip_authenticated` is set. Start from here: every hook of
`Plugin` defaults to "no opinion", so override only the ones you need (connect, ehlo, mail_from,
rcpt, data, deliver, delivered, deferred, bounced).
"""

from dataclasses import dataclass

from wasmtp_plugin import ConfigError, Plugin, add_header, outcome


@dataclass
class Config:
    """The `[plugin.config]` table of the server config. Every key has a default, and an unknown
    key refuses the plugin at load, so a typo cannot go unnoticed."""

    header: str = "X-{{name}}"
    skip_authenticated: bool = False


class Tagger(Plugin):
    name = "{{name}}"
    Config = Config

    def configure(self) -> None:
        """Runs once per instance after the config was parsed; a ConfigError refuses it."""
        header = self.config.header
        if not header or ":" in header or " " in header:
            raise ConfigError(f"header {header!r} is not a field name")

    def data(self, conn, env, msg):
        if self.config.skip_authenticated and conn.authenticated is not None:
            return None  # continue
        helo = conn.helo or "(none)"
        return outcome(mods=[add_header(self.config.header, f"from {conn.peer_ip} helo {helo}")])


# What componentize-py exports: the SDK's wrapper with defaults for every hook.
Hooks = Tagger.export()
