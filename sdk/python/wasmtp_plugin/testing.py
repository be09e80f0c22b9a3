"""Run a plugin under plain python3 with fake host capabilities.

The types are the real generated ones: `build.sh test` writes componentize-py's bindings for the
plugin's world into `.wasmtp/bindings` and puts that directory on `sys.path` before the tests
run, so what a test builds is what the component sees. The capabilities (log, notes, kv, dns,
clock) are replaced by in-memory fakes:

    import unittest
    from wasmtp_plugin.testing import FakeHost
    import app

    class StampTest(unittest.TestCase):
        def test_adds_the_header(self):
            host = FakeHost()
            out = host.call(app.Stamp, "data", host.connection(), host.envelope("a@b.example",
                            ["c@d.example"]), host.message(b"Subject: hi\\r\\n\\r\\nbody\\r\\n"))
            self.assertEqual(out.modifications[0].value.name, "X-Stamp")

`FakeHost.call` runs `init` with `config` (a dict, encoded as the host would) and then the hook,
through the same export the component uses, so a refused config raises
`componentize_py_types.Err` and an exception in a hook is logged to `host.logs` and re-raised.
"""

import email
import email.policy
import json
from typing import Any, Dict, List, Optional, Tuple

try:
    from componentize_py_types import Err  # noqa: F401  (re-exported for tests)
    from wit_world.imports import types as _types
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "wasmtp_plugin.testing needs componentize-py's bindings for the plugin's world on "
        "sys.path: run the tests with `./build.sh test` (it generates them into "
        ".wasmtp/bindings)"
    ) from e


class FakeMessage(_types.Message):
    """The `message` resource of the data hook, over raw bytes; `auth` is what `auth_results()`
    returns (an `AuthResults` of the bindings, or None as when the server's verification is off)."""

    def __init__(self, raw: bytes, auth: Any = None):
        self.raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.auth = auth
        self._parsed = email.message_from_bytes(self.raw, policy=email.policy.compat32)

    def headers(self) -> List[Any]:
        return [_types.Header(name=k, value=_unfold(v)) for k, v in self._parsed.items()]

    def header(self, name: str) -> List[str]:
        return [_unfold(v) for v in self._parsed.get_all(name) or []]

    def size(self) -> int:
        return len(self.raw)

    def body(self, offset: int, len: int) -> bytes:
        return self.raw[offset : offset + len]

    def text(self, max_bytes: int) -> str:
        parts = []
        for part in self._parsed.walk():
            if part.get_content_type() == "text/plain" and not part.is_multipart():
                payload = part.get_payload(decode=True) or b""
                parts.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
        text = "\n\n".join(parts).encode()[:max_bytes]
        return text.decode("utf-8", "ignore")

    def auth_results(self) -> Any:
        return self.auth

    def __exit__(self, *args) -> None:
        return None


def _unfold(v: str) -> str:
    return " ".join(line.strip() for line in str(v).splitlines()).strip()


class FakeHost:
    """In-memory log, notes, kv, dns and clock, installed in place of the host's while a call
    runs. `logs` collects (level, message) pairs; `notes` and `kv` are dicts a test can fill and
    read; `dns_answers` maps (kind, name) to a list of answers or to a `DnsError_*` value; `now_ms`
    is what the clock returns."""

    def __init__(self, now_ms: int = 0, dns_answers: Optional[Dict[Tuple[str, str], Any]] = None):
        self.logs: List[Tuple[str, str]] = []
        self.notes: Dict[str, str] = {}
        self.kv: Dict[str, bytes] = {}
        self.now_ms = now_ms
        self.dns_answers = dict(dns_answers or {})

    # Records the host hands to hooks ---------------------------------------------------------

    def connection(self, peer_ip: str = "192.0.2.1", helo: Optional[str] = "client.example",
                   authenticated: Optional[str] = None, listener: str = "mx") -> Any:
        return _types.Connection(
            session_id="test-session", peer_ip=peer_ip, peer_port=40000, local_ip="127.0.0.1",
            local_port=25, listener=listener, tls=None, authenticated=authenticated, helo=helo,
        )

    def envelope(self, sender: str, recipients: List[str]) -> Any:
        return _types.Envelope(
            sender=sender, sender_params=[],
            recipients=[_types.Recipient(address=r, params=[]) for r in recipients],
        )

    def recipient(self, address: str) -> Any:
        return _types.Recipient(address=address, params=[])

    def message(self, raw: bytes, auth: Any = None) -> FakeMessage:
        return FakeMessage(raw, auth)

    def report(self, recipient: str, detail: str = "250 ok", sender: str = "a@example.org") -> Any:
        return _types.DeliveryReport(queue_id="TESTQUEUEID", sender=sender, recipient=recipient,
                                     attempts=1, detail=detail)

    # Running a plugin ------------------------------------------------------------------------

    def call(self, plugin_cls: type, hook: str, *args: Any, config: Optional[Dict] = None) -> Any:
        """`init(config)` then `hook(*args)` through the plugin's export, with this host's fakes
        installed; returns what the component would return (WIT types)."""
        hooks = plugin_cls.export()()
        with self._installed():
            hooks.init(json.dumps(config or {}))
            return getattr(hooks, hook)(*args)

    def init(self, plugin_cls: type, config: Optional[Dict] = None) -> None:
        """Only `init`: raises `componentize_py_types.Err` when the config is refused."""
        with self._installed():
            plugin_cls.export()().init(json.dumps(config or {}))

    def _installed(self):
        return _Patch(self)

    # The fakes -------------------------------------------------------------------------------

    def _log(self, level: Any, message: str) -> None:
        self.logs.append((level.name.lower(), message))

    def _kv_incr(self, key: str, delta: int, ttl: Optional[int]) -> int:
        n = int(self.kv.get(key, b"0")) + delta
        self.kv[key] = str(n).encode()
        return n

    def _dns(self, kind: str):
        def lookup(name: str):
            answer = self.dns_answers.get((kind, name), [])
            if not isinstance(answer, list):
                raise Err(answer)
            return answer

        return lookup

    def _fakes(self) -> Dict[str, Dict[str, Any]]:
        return {
            "log": {"log": self._log},
            "notes": {
                "get": self.notes.get,
                "set": self.notes.__setitem__,
                "remove": lambda k: self.notes.pop(k, None),
                "entries": lambda p: sorted((k, v) for k, v in self.notes.items() if k.startswith(p)),
            },
            "kv": {
                "get": self.kv.get,
                "set": lambda k, v, ttl: self.kv.__setitem__(k, bytes(v)),
                "delete": lambda k: self.kv.pop(k, None),
                "incr": self._kv_incr,
            },
            "dns": {k: self._dns(k) for k in ("a", "aaaa", "mx", "txt", "ptr")},
            "clock": {"now": lambda: self.now_ms},
        }


class _Patch:
    """Swaps the functions of the generated import modules for the fakes, and back."""

    def __init__(self, host: FakeHost):
        self.host = host
        self.saved: List[Tuple[Any, str, Any]] = []

    def __enter__(self):
        for module_name, funcs in self.host._fakes().items():
            try:
                module = __import__(f"wit_world.imports.{module_name}", fromlist=["_"])
            except ImportError:  # not in this world
                continue
            for fname, fake in funcs.items():
                self.saved.append((module, fname, getattr(module, fname)))
                setattr(module, fname, fake)
        return self

    def __exit__(self, *exc) -> None:
        for module, fname, original in reversed(self.saved):
            setattr(module, fname, original)


__all__ = ["FakeHost", "FakeMessage", "Err"]
