"""sender-block: a wasmtp plugin written in Python (componentize-py), built against the
`plugin-basic` world (log + notes only, no grants).

It refuses MAIL FROM senders whose domain is listed in the config:

    [[plugin]]
    name = "sender-block"
    path = "plugins/target/python/sender_block.wasm"
    hooks = ["mail-from"]

    [plugin.config]
    domains = ["spam.example", "junk.example"]
    message = "Sender domain refused"   # optional

It exists mainly so that a WIT change that breaks other languages fails CI.
"""

import json

from wit_world import exports
from wit_world.imports import log, notes
from wit_world.imports.types import (
    Connection,
    DeliveryReport,
    Envelope,
    Message,
    Outcome,
    Recipient,
    Reply,
    Route,
    Verdict,
    Verdict_Continue,
    Verdict_Reject,
)
from componentize_py_types import Err

# The config parsed by init. Instances are per transaction at most, and init runs on each.
_domains: set = set()
_message: str = "Sender domain refused"


def _continue() -> Outcome:
    return Outcome(verdict=Verdict_Continue(), modifications=[])


class Hooks(exports.Hooks):
    def init(self, config: str) -> None:
        global _domains, _message
        try:
            table = json.loads(config or "{}")
            domains = table.get("domains", [])
            if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
                raise ValueError("domains must be a list of strings")
            _domains = {d.lower().strip() for d in domains}
            _message = str(table.get("message", _message))
        except Exception as e:  # any config problem refuses the plugin at load time
            raise Err(f"sender-block: invalid config: {e}")

    def connect(self, conn: Connection) -> Verdict:
        return Verdict_Continue()

    def ehlo(self, conn: Connection, name: str) -> Verdict:
        return Verdict_Continue()

    def mail_from(self, conn: Connection, sender: str, params) -> Outcome:
        domain = sender.rsplit("@", 1)[1].lower() if "@" in sender else ""
        if domain and domain in _domains:
            log.log(log.Level.INFO, f"sender-block: refusing {sender}")
            notes.set("sender-block.refused", sender)
            reply = Reply(code=550, enhanced="5.7.1", text=f"{_message}: {domain}")
            return Outcome(verdict=Verdict_Reject(value=reply), modifications=[])
        return _continue()

    def rcpt(self, conn: Connection, env: Envelope, rcpt: Recipient) -> Outcome:
        return _continue()

    def data(self, conn: Connection, env: Envelope, msg: Message) -> Outcome:
        return _continue()

    def deliver(self, conn: Connection, env: Envelope) -> list:
        return []

    def delivered(self, report: DeliveryReport) -> None:
        pass

    def deferred(self, report: DeliveryReport) -> None:
        pass

    def bounced(self, report: DeliveryReport) -> None:
        pass
