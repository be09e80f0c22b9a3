"""sender-block: a wasmtp plugin written in Python on the SDK in sdk/python (componentize-py),
built against the `plugin-basic` world (log + notes only, no grants).

It refuses MAIL FROM senders whose domain is listed in the config:

    [[plugin]]
    name = "sender-block"
    path = "plugins/target/python/sender_block.wasm"
    hooks = ["mail-from"]

    [plugin.config]
    domains = ["spam.example", "junk.example"]
    message = "Sender domain refused"   # optional

Its manifest says `"stateless": true`: `configure` builds the domain set once and the hook only
reads it, so one warm instance may serve many transactions (docs/plugins.md, "Instances"). A
plugin that keeps per-message data in its globals must not say so.

It exists mainly so that a WIT change that breaks other languages fails CI.
"""

from dataclasses import dataclass, field
from typing import List

from wasmtp_plugin import ConfigError, Plugin, domain_of, log, notes, reject


@dataclass
class Config:
    domains: List[str] = field(default_factory=list)
    message: str = "Sender domain refused"


class SenderBlock(Plugin):
    name = "sender-block"
    Config = Config

    def configure(self) -> None:
        self.domains = {d.lower().strip() for d in self.config.domains}
        if "" in self.domains:
            raise ConfigError("config key `domains`: an empty domain matches nothing")

    def mail_from(self, conn, sender, params):
        domain = domain_of(sender)
        if domain in self.domains:
            log.info(f"sender-block: refusing {sender}")
            notes.set("sender-block.refused", sender)
            return reject(f"{self.config.message}: {domain}", code=550, enhanced="5.7.1")
        return None


Hooks = SenderBlock.export()
