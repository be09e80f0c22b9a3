//! The glue between the generated `Guest` trait and [`Plugin`]: keeps the instance `init` built
//! and forwards each hook to it. [`export!`](crate::export!) names `Exports<YourPlugin>`.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::bindings::exports::wasmtp::plugin::hooks::Guest;
use crate::bindings::wasmtp::plugin::types;
use crate::{Config, Connection, DeliveryReport, Envelope, Message, Outcome, Params, Plugin};
use crate::{Recipient, Route, Verdict};

thread_local! {
    // A component instance is single-threaded; this holds the plugin `init` built for it.
    static INSTANCE: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

/// Sends panic messages to the server's log through the `log` capability (always granted), then
/// lets the default hook print them to stderr, which the server also captures: the panic text
/// reaches the log whichever path works.
#[cfg(target_arch = "wasm32")]
fn log_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            crate::log::error(&format!("panic: {info}"));
            default(info);
        }));
    });
}

/// Heap grown once in `init` and freed again (see `reserve_heap`).
const HEAP_RESERVE: usize = 512 * 1024;

/// Grows the heap by what hooks typically allocate (a message's text and headers, copies of
/// them) and frees it: the allocator keeps the memory, so a hook rarely has to grow linear
/// memory. The host takes a snapshot after `init`, so this growth is part of every fresh
/// instance's initial memory and costs nothing per instance; without it the first large
/// allocation of each instance grew memory, which costs the host two `mprotect` calls per
/// instance (one when it grows, one when its slot is reset), the second flushing the TLB of
/// every core. Untouched pages take no memory.
fn reserve_heap() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(HEAP_RESERVE)));
}

/// Implements the generated hooks for a [`Plugin`]; used through [`export!`](crate::export!).
pub struct Exports<P>(PhantomData<P>);

fn instance<P: Plugin>() -> Rc<P> {
    let any = INSTANCE
        .with(|slot| slot.borrow().clone())
        .expect("wasmtp host called a hook before init");
    any.downcast::<P>()
        .unwrap_or_else(|_| unreachable!("one plugin type per component"))
}

impl<P: Plugin> Guest for Exports<P> {
    fn init(config: String) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        log_panics();
        let plugin = P::init(Config::from_json(&config)?)?;
        INSTANCE.with(|slot| *slot.borrow_mut() = Some(Rc::new(plugin)));
        reserve_heap();
        Ok(())
    }

    fn connect(conn: Connection) -> Verdict {
        instance::<P>().connect(&conn)
    }

    fn ehlo(conn: Connection, name: String) -> Verdict {
        instance::<P>().ehlo(&conn, &name)
    }

    fn mail_from(conn: Connection, sender: String, params: Params) -> Outcome {
        instance::<P>().mail_from(&conn, &sender, &params)
    }

    fn rcpt(conn: Connection, env: Envelope, rcpt: Recipient) -> Outcome {
        instance::<P>().rcpt(&conn, &env, &rcpt)
    }

    fn data(conn: Connection, env: Envelope, msg: &types::Message) -> Outcome {
        instance::<P>().data(&conn, &env, &Message::host(msg))
    }

    fn deliver(conn: Connection, env: Envelope) -> Vec<Route> {
        let plugin = instance::<P>();
        let routes: Vec<Route> = env
            .recipients
            .iter()
            .map(|rcpt| plugin.deliver(&conn, &env, rcpt))
            .collect();
        // Trailing defaults need not cross the boundary: a shorter list means "default" for the rest.
        let keep = routes
            .iter()
            .rposition(|r| *r != Route::Default)
            .map_or(0, |i| i + 1);
        routes.into_iter().take(keep).collect()
    }

    fn delivered(report: DeliveryReport) {
        instance::<P>().delivered(&report)
    }

    fn deferred(report: DeliveryReport) {
        instance::<P>().deferred(&report)
    }

    fn bounced(report: DeliveryReport) {
        instance::<P>().bounced(&report)
    }
}

#[cfg(all(test, fake_host))]
mod tests {
    use super::*;
    use crate::testing;

    struct Relayer(String);

    impl Plugin for Relayer {
        fn init(config: Config) -> Result<Self, String> {
            let host = config.as_json()["host"].as_str().ok_or("host missing")?;
            Ok(Relayer(host.to_string()))
        }
        fn deliver(&self, _: &Connection, _: &Envelope, rcpt: &Recipient) -> Route {
            if rcpt.address.ends_with("@relay.example") {
                Route::relay(&self.0)
            } else {
                Route::Default
            }
        }
    }

    type E = Exports<Relayer>;

    #[test]
    fn init_errors_reach_the_host() {
        assert_eq!(E::init("{}".into()), Err("host missing".to_string()));
        assert!(
            E::init("not json".into())
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn default_hooks_continue_and_routes_are_trimmed() {
        E::init(r#"{"host": "mx.example"}"#.into()).unwrap();
        let conn = testing::connection("192.0.2.1");
        assert_eq!(E::connect(conn.clone()), Verdict::Continue);
        assert_eq!(
            E::mail_from(conn.clone(), "".into(), vec![]),
            Outcome::CONTINUE
        );
        let env = testing::envelope("a@x", &["a@relay.example", "b@local.example"]);
        assert_eq!(
            E::deliver(conn.clone(), env),
            vec![Route::relay("mx.example")]
        );
        let env = testing::envelope("a@x", &["b@local.example"]);
        assert_eq!(E::deliver(conn, env), vec![]);
    }
}
