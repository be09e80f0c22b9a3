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

import functools
import json
import traceback

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


def _logged(hook):
    """Logs an exception's traceback through the host's log capability, then re-raises it (the
    call traps and the plugin's on_error applies). Built with --stub-wasi, the component has no
    stderr the host could capture, so this is how the cause reaches the server's log."""

    @functools.wraps(hook)
    def wrapper(self, *args):
        try:
            return hook(self, *args)
        except Exception:
            log.log(log.Level.ERROR, f"sender-block: {hook.__name__} raised:\n{traceback.format_exc()}")
            raise

    return wrapper


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

    @_logged
    def connect(self, conn: Connection) -> Verdict:
        return Verdict_Continue()

    @_logged
    def ehlo(self, conn: Connection, name: str) -> Verdict:
        return Verdict_Continue()

    @_logged
    def mail_from(self, conn: Connection, sender: str, params) -> Outcome:
        domain = sender.rsplit("@", 1)[1].lower() if "@" in sender else ""
        if domain and domain in _domains:
            log.log(log.Level.INFO, f"sender-block: refusing {sender}")
            notes.set("sender-block.refused", sender)
            reply = Reply(code=550, enhanced="5.7.1", text=f"{_message}: {domain}")
            return Outcome(verdict=Verdict_Reject(value=reply), modifications=[])
        return _continue()

    @_logged
    def rcpt(self, conn: Connection, env: Envelope, rcpt: Recipient) -> Outcome:
        return _continue()

    @_logged
    def data(self, conn: Connection, env: Envelope, msg: Message) -> Outcome:
        return _continue()

    @_logged
    def deliver(self, conn: Connection, env: Envelope) -> list:
        return []

    @_logged
    def delivered(self, report: DeliveryReport) -> None:
        pass

    @_logged
    def deferred(self, report: DeliveryReport) -> None:
        pass

    @_logged
    def bounced(self, report: DeliveryReport) -> None:
        pass
