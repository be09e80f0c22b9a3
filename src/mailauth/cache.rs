//! The DNS cache of mail authentication: answers mail-auth asked for (SPF
//! and DMARC policies, DKIM keys, the A/AAAA/MX/PTR lookups of SPF
//! mechanisms), parsed, kept until the record's TTL runs out, at most
//! `authentication.cache_size` entries per record type (least recently used
//! go first). The resolver underneath caches raw answers too; this one
//! saves parsing a policy again for every message from the same domain.

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use mail_auth::{MX, RecordSet, ResolverCache, Txt};

/// One record type's cache: the value and the instant it stops being valid.
pub struct DnsCache<K, V> {
    inner: moka::sync::Cache<K, (V, Instant)>,
}

fn new_cache<K, V>(capacity: u64) -> DnsCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    DnsCache {
        inner: moka::sync::Cache::new(capacity),
    }
}

impl<K, V> ResolverCache<K, V> for DnsCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (value, valid_until) = self.inner.get(name)?;
        if valid_until > Instant::now() {
            Some(value)
        } else {
            self.inner.invalidate(name);
            None
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.inner.insert(key, (value, valid_until));
    }
}

/// The five caches mail-auth takes.
pub struct Caches {
    pub(super) txt: DnsCache<Box<str>, Txt>,
    pub(super) mx: DnsCache<Box<str>, RecordSet<MX>>,
    pub(super) ipv4: DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    pub(super) ipv6: DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    pub(super) ptr: DnsCache<IpAddr, RecordSet<Box<str>>>,
}

impl Caches {
    /// Caches of at most `capacity` entries each.
    pub fn new(capacity: u64) -> Caches {
        Caches {
            txt: new_cache(capacity),
            mx: new_cache(capacity),
            ipv4: new_cache(capacity),
            ipv6: new_cache(capacity),
            ptr: new_cache(capacity),
        }
    }
}

/// Wraps one check's parameters with every cache.
macro_rules! cached {
    ($caches:expr, $params:expr) => {
        mail_auth::Parameters::new($params)
            .with_txt_cache(&$caches.txt)
            .with_mx_cache(&$caches.mx)
            .with_ipv4_cache(&$caches.ipv4)
            .with_ipv6_cache(&$caches.ipv6)
            .with_ptr_cache(&$caches.ptr)
    };
}
pub(super) use cached;
