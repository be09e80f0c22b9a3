"""wasmtp_plugin: write wasmtp policy plugins in Python (componentize-py).

Subclass `Plugin`, override only the hooks you need (every hook defaults to "no opinion"), and
export it from your app module:

    from wasmtp_plugin import Plugin, add_header, outcome

    class Stamp(Plugin):
        name = "stamp"

        def data(self, conn, env, msg):
            return outcome(mods=[add_header("X-Stamp", "yes")])

    Hooks = Stamp.export()

What the SDK does for you:

- hooks you do not override answer `continue` (no routes at `deliver`, nothing for the
  notification hooks), so you never write the nine hooks of the WIT world yourself;
- a hook may return a verdict, an `Outcome`, or None (= continue), whatever the WIT return type
  is: the SDK converts;
- `init` parses the JSON config into your `Config` dataclass and refuses unknown keys and wrong
  types with a message naming the key (`allow_unknown_config = True` turns the unknown-key check
  off);
- an exception in a hook is logged at error level through the host's `log` with the plugin's
  name, the hook and the traceback, then re-raised, so the call traps and the server applies the
  plugin's `on_error`: the log says why, not just `unreachable`.

Host capabilities: `log` (always), `notes` (always), `kv`, `dns`, `clock` (granted in the server
config). componentize-py imports every interface of the world it builds against: build against
`plugin-basic` (log and notes) unless you need a grant, and against `plugin` (all of them; the
server config must then grant "kv", "dns" and "clock") when you do.

Native tests: `wasmtp_plugin.testing.FakeHost` runs a plugin under plain python3 with fake
capabilities (see its docstring).
"""

import dataclasses
import importlib
import json
import sys
import traceback
import typing
from typing import Any, Dict, List, Optional, Tuple

__version__ = "0.2.0"
__all__ = [
    "Plugin", "ConfigError", "Outcome", "outcome",
    "continue_", "accept", "reject", "tempfail", "disconnect", "discard", "quarantine",
    "add_header", "remove_header", "change_header", "set_sender", "add_recipient",
    "remove_recipient", "route_default", "route_local", "route_relay", "route_discard",
    "log", "notes", "kv", "dns", "clock", "parse_config", "domain_of",
]

# The generated bindings (`wit_world`) exist inside the component (componentize-py writes them)
# and, for native tests, in the bindings directory `build.sh test` generates. They are imported
# here, once, when this module is first imported: inside the component that happens while
# componentize-py pre-initializes the app, so every module is in the snapshot. An import at call
# time would search a filesystem the component does not have, and trap. A plugin built against
# `plugin-basic` has no kv, dns or clock modules; using one then raises a clear error.

_CAPABILITIES: Dict[str, Any] = {}
for _name in ("types", "log", "notes", "kv", "dns", "clock"):
    try:
        _CAPABILITIES[_name] = importlib.import_module("wit_world.imports." + _name)
    except ImportError:
        pass


def _types():
    return _import("types")


def _import(name: str):
    module = _CAPABILITIES.get(name)
    if module is None:
        raise RuntimeError(
            f"the `{name}` capability is not in the world this plugin was built for: build "
            f"against the `plugin` world (build.sh --world plugin) and grant \"{name}\" in the "
            "server config"
        )
    return module


# ---------------------------------------------------------------------------------------------
# Verdicts, outcomes, modifications, routes


def _reply(text: str, code: Optional[int], enhanced: Optional[str]):
    if not text and code is None and enhanced is None:
        return None
    return _types().Reply(code=code, enhanced=enhanced, text=text)


def continue_():
    """No opinion: the next plugin (or the server's own policy) decides."""
    return _types().Verdict_Continue()


def accept(text: str = "", code: Optional[int] = None, enhanced: Optional[str] = None):
    """Accept now, skipping the remaining plugins at this hook. A code must be 2xx."""
    return _types().Verdict_Accept(_reply(text, code, enhanced))


def reject(text: str = "", code: Optional[int] = None, enhanced: Optional[str] = None):
    """Refuse permanently (default `550 5.7.1`; a code must be 5xx)."""
    return _types().Verdict_Reject(_reply(text, code, enhanced))


def tempfail(text: str = "", code: Optional[int] = None, enhanced: Optional[str] = None):
    """Refuse temporarily (default `451 4.7.1`; a code must be 4xx)."""
    return _types().Verdict_Tempfail(_reply(text, code, enhanced))


def disconnect(text: str = "", code: Optional[int] = None, enhanced: Optional[str] = None):
    """Send the reply (default `421 4.7.0`) and close the connection."""
    return _types().Verdict_Disconnect(_reply(text, code, enhanced))


def discard():
    """Answer success but drop the message (at `rcpt`: drop that recipient)."""
    return _types().Verdict_Discard()


def quarantine(reason: str):
    """Accept the message into quarantine; `reason` is shown to the operator."""
    return _types().Verdict_Quarantine(reason)


def add_header(name: str, value: str):
    """Add a header field at the top of the message."""
    t = _types()
    return t.Modification_AddHeader(t.Header(name=name, value=value))


def remove_header(name: str):
    """Remove every header field with this name (case-insensitive)."""
    return _types().Modification_RemoveHeader(name)


def change_header(name: str, value: str):
    """Replace the first field with this name (and remove the others); add it when absent."""
    t = _types()
    return t.Modification_ChangeHeader(t.Header(name=name, value=value))


def set_sender(address: str):
    """Replace the envelope sender (`""` for the null sender)."""
    return _types().Modification_SetSender(address)


def add_recipient(address: str):
    """Add an envelope recipient."""
    return _types().Modification_AddRecipient(address)


def remove_recipient(address: str):
    """Remove an envelope recipient."""
    return _types().Modification_RemoveRecipient(address)


def route_default():
    """Let the next plugin or the server's own routing decide this recipient."""
    return _types().Route_Default()


def route_local(mailbox: str):
    """Deliver into this local mailbox."""
    return _types().Route_Local(mailbox)


def route_relay(host: str, port: Optional[int] = None):
    """Relay to this host over SMTP (port 25 when None)."""
    t = _types()
    return t.Route_Relay(t.RelayTarget(host=host, port=port))


def route_discard():
    """Drop this recipient's copy silently."""
    return _types().Route_Discard()


@dataclasses.dataclass
class Outcome:
    """What `mail_from`, `rcpt` and `data` answer: a verdict (None = continue) and modifications
    (applied when the verdict lets the transaction go on)."""

    verdict: Any = None
    mods: List[Any] = dataclasses.field(default_factory=list)


def outcome(verdict: Any = None, mods: Optional[List[Any]] = None) -> Outcome:
    """An `Outcome`: `outcome(mods=[add_header(...)])`, `outcome(reject("no"))`."""
    return Outcome(verdict, list(mods or []))


def _to_verdict(value: Any):
    if value is None:
        return continue_()
    if isinstance(value, Outcome):
        if value.mods:
            raise TypeError("this hook answers a verdict only; modifications are not allowed")
        return _to_verdict(value.verdict)
    return value


def _to_outcome(value: Any):
    t = _types()
    if isinstance(value, t.Outcome):
        return value
    if isinstance(value, Outcome):
        return t.Outcome(verdict=_to_verdict(value.verdict), modifications=list(value.mods))
    return t.Outcome(verdict=_to_verdict(value), modifications=[])


# ---------------------------------------------------------------------------------------------
# Capabilities


class _Log:
    """The server's log, tagged with the plugin name and hook (always granted)."""

    def _write(self, level: str, message: str) -> None:
        m = _import("log")
        m.log(getattr(m.Level, level), message)

    def trace(self, message: str) -> None:
        self._write("TRACE", message)

    def debug(self, message: str) -> None:
        self._write("DEBUG", message)

    def info(self, message: str) -> None:
        self._write("INFO", message)

    def warn(self, message: str) -> None:
        self._write("WARN", message)

    def error(self, message: str) -> None:
        self._write("ERROR", message)


class _Notes:
    """Per-transaction notes shared by the plugins of a session (always granted)."""

    def get(self, key: str) -> Optional[str]:
        return _import("notes").get(key)

    def set(self, key: str, value: str) -> None:
        _import("notes").set(key, value)

    def remove(self, key: str) -> None:
        _import("notes").remove(key)

    def entries(self, prefix: str = "") -> List[Tuple[str, str]]:
        return list(_import("notes").entries(prefix))


class _Kv:
    """The plugin's persistent key-value namespace (grant "kv"). Errors raise
    `componentize_py_types.Err` with the host's message."""

    def get(self, key: str) -> Optional[bytes]:
        return _import("kv").get(key)

    def set(self, key: str, value: bytes, ttl_seconds: Optional[int] = None) -> None:
        _import("kv").set(key, bytes(value), ttl_seconds)

    def delete(self, key: str) -> None:
        _import("kv").delete(key)

    def incr(self, key: str, delta: int = 1, ttl_seconds: Optional[int] = None) -> int:
        return _import("kv").incr(key, delta, ttl_seconds)


class _Dns:
    """Lookups through the server's resolver (grant "dns"). A failure raises
    `componentize_py_types.Err` whose value is a `DnsError_*` (NotFound, Timeout, ...)."""

    def a(self, name: str) -> List[str]:
        return _import("dns").a(name)

    def aaaa(self, name: str) -> List[str]:
        return _import("dns").aaaa(name)

    def mx(self, name: str) -> list:
        return _import("dns").mx(name)

    def txt(self, name: str) -> List[str]:
        return _import("dns").txt(name)

    def ptr(self, ip: str) -> List[str]:
        return _import("dns").ptr(ip)


class _Clock:
    """The wall clock (grant "clock")."""

    def now(self) -> int:
        """Milliseconds since the Unix epoch."""
        return _import("clock").now()


log = _Log()
notes = _Notes()
kv = _Kv()
dns = _Dns()
clock = _Clock()


def domain_of(address: str) -> str:
    """The lower-cased domain of `local@domain` (`""` when there is none)."""
    return address.rsplit("@", 1)[1].lower() if "@" in address else ""


# ---------------------------------------------------------------------------------------------
# Config


class ConfigError(Exception):
    """Raise from `configure` to refuse the plugin's config; the message reaches the server log
    (and `check-config`) with the plugin's name."""


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _check_type(key, value, arm)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key `{key}`: unexpected value")
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"config key `{key}`: expected a list, got {_json_kind(value)}")
        item = args[0] if args else Any
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key `{key}`: expected a table, got {_json_kind(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: _check_type(f"{key}.{k}", v, item) for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key `{key}`: expected a number, got {_json_kind(value)}")
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"config key `{key}`: expected an integer, got a boolean")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(
            f"config key `{key}`: expected {_kind_name(hint)}, got {_json_kind(value)}"
        )
    return value


def _kind_name(t: type) -> str:
    return {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}.get(
        t, t.__name__
    )


def _json_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a table"
    return "null"


def parse_config(text: str, schema: Optional[type], allow_unknown: bool = False) -> Any:
    """Parse the JSON config the host hands to `init` into the dataclass `schema`.

    Every field needs a default (a plugin must work with an empty config). Unknown keys are
    refused unless `allow_unknown`; values are checked against the field types (str, int,
    float, bool, Optional[...], List[...], Dict[str, ...]). With no schema, the config must be
    empty (or any table with `allow_unknown`), and the raw dict is returned.
    """
    try:
        table = json.loads(text or "{}")
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if not isinstance(table, dict):
        raise ConfigError("config must be a table")
    if schema is None:
        if table and not allow_unknown:
            keys = ", ".join(sorted(table))
            raise ConfigError(f"unknown config key(s): {keys} (this plugin takes no config)")
        return table
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(k for k in table if k not in fields)
    if unknown and not allow_unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"unknown config key `{unknown[0]}` (known keys: {known})")
    hints = typing.get_type_hints(schema)
    values = {
        k: _check_type(k, v, hints.get(k, Any)) for k, v in table.items() if k in fields
    }
    return schema(**values)


# ---------------------------------------------------------------------------------------------
# The plugin base class

_VERDICT_HOOKS = ("connect", "ehlo")
_OUTCOME_HOOKS = ("mail_from", "rcpt", "data")
_NOTIFY_HOOKS = ("delivered", "deferred", "bounced")


class Plugin:
    """Base class of a plugin: every hook answers "no opinion".

    Class attributes:
      name: the plugin's name in the messages this SDK logs (default: the class name);
      Config: a dataclass describing `[plugin.config]` (None: the plugin takes no config);
      allow_unknown_config: accept config keys `Config` does not know (default False).

    `self.config` holds the parsed config when a hook runs; override `configure(self)` to check
    more and raise `ConfigError` to refuse it.
    """

    name: str = ""
    Config: Optional[type] = None
    allow_unknown_config: bool = False

    def configure(self) -> None:
        """Called by `init` after the config was parsed into `self.config`."""

    def connect(self, conn):
        return None

    def ehlo(self, conn, name: str):
        return None

    def mail_from(self, conn, sender: str, params):
        return None

    def rcpt(self, conn, env, rcpt):
        return None

    def data(self, conn, env, msg):
        return None

    def deliver(self, conn, env) -> list:
        return []

    def delivered(self, report) -> None:
        pass

    def deferred(self, report) -> None:
        pass

    def bounced(self, report) -> None:
        pass

    @classmethod
    def plugin_name(cls) -> str:
        return cls.name or cls.__name__

    @classmethod
    def export(cls) -> type:
        """The class componentize-py calls: assign it to `Hooks` in the app module."""
        return _make_hooks(cls)


def _format_exception(e: BaseException) -> str:
    """The exception and where it was raised, without source lines: `traceback.format_exc`
    reads source files through linecache, and a stat in a component built with --stub-wasi
    traps before the message could be logged."""
    frames = [
        f"  File \"{f.f_code.co_filename}\", line {line}, in {f.f_code.co_name}"
        for f, line in traceback.walk_tb(e.__traceback__)
    ]
    head = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return "\n".join([head, "Traceback (most recent call last):", *frames])


def _report(plugin_name: str, hook: str, e: BaseException) -> None:
    text = f"{plugin_name}: exception in {hook}: {_format_exception(e)}"
    try:
        log.error(text)
    except BaseException:  # no host to log to (natively, without FakeHost): stderr
        print(text, file=sys.stderr)


def _make_hooks(cls: type) -> type:
    def call(self, hook: str, convert, *args):
        try:
            return convert(getattr(type(self).plugin, hook)(*args))
        except BaseException as e:
            _report(cls.plugin_name(), hook, e)
            raise

    def init(self, config: str) -> None:
        from componentize_py_types import Err

        try:
            plugin = cls()
            plugin.config = parse_config(config, cls.Config, cls.allow_unknown_config)
            plugin.configure()
        except ConfigError as e:
            raise Err(f"{cls.plugin_name()}: {e}") from None
        except BaseException as e:
            _report(cls.plugin_name(), "init", e)
            raise Err(f"{cls.plugin_name()}: init raised {type(e).__name__}: {e}") from None
        # On the class: init and the hooks run on one instance per transaction, but nothing
        # here relies on componentize-py calling them on the same Python object.
        type(self).plugin = plugin

    namespace: Dict[str, Any] = {
        "init": init,
        "plugin": None,
        "__doc__": f"componentize-py export of {cls.__name__}",
    }

    def hook(name: str, convert):
        def method(self, *args):
            return call(self, name, convert, *args)

        method.__name__ = name
        return method

    for h in _VERDICT_HOOKS:
        namespace[h] = hook(h, _to_verdict)
    for h in _OUTCOME_HOOKS:
        namespace[h] = hook(h, _to_outcome)
    namespace["deliver"] = hook("deliver", lambda routes: list(routes or []))
    for h in _NOTIFY_HOOKS:
        namespace[h] = hook(h, lambda _: None)

    bases: Tuple[type, ...] = ()
    try:
        from wit_world import exports

        bases = (exports.Hooks,)
    except ImportError:  # natively without bindings: a plain class does the same job
        pass
    return type("Hooks", bases, namespace)
