//! The etcd store on a real 3-member cluster on loopback.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::etcd_cluster::{etcd_available, EtcdCluster};
use crate::store::{contract, Store};

fn config(cluster: &EtcdCluster, prefix: &str, name: &str) -> EtcdConfig {
    let mut c = EtcdConfig::parse(&cluster.url(prefix), name).unwrap();
    c.lease_ttl = Duration::from_secs(2);
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn lead(rt: &tokio::runtime::Runtime, config: EtcdConfig) -> EtcdStore {
    rt.block_on(EtcdStore::lead(config, |_| {})).unwrap()
}

#[test]
fn urls_name_endpoints_and_a_prefix() {
    let c = EtcdConfig::parse("etcd://a:1,b:2/sys/one/", "me").unwrap();
    assert_eq!(c.endpoints, ["a:1", "b:2"]);
    assert_eq!(c.prefix, "/sys/one");
    assert!(c.user.is_none());
    let c = EtcdConfig::parse("etcd://a:1", "me").unwrap();
    assert_eq!(c.prefix, "/continuum");
    let c = EtcdConfig::parse("etcd://root:s3cret@a:1,b:2", "me").unwrap();
    assert_eq!(c.user, Some(("root".into(), "s3cret".into())));
    assert_eq!(c.endpoints, ["a:1", "b:2"]);
    for bad in [
        "http://a:1",
        "etcd://",
        "etcd://a",
        "etcd://a:x",
        "etcd://nopass@a:1",
    ] {
        assert!(EtcdConfig::parse(bad, "me").is_err(), "{bad}");
    }
}

#[test]
fn the_etcd_store_keeps_what_a_store_must_keep() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let rt = runtime();
    let first = Store::with_backend(lead(&rt, config(&cluster, "contract", "first")));
    contract::exercise(first, &|first| {
        // The first gives the lead up; the next leader reads the same state.
        drop(first);
        Store::with_backend(lead(&rt, config(&cluster, "contract", "second")))
    });
}

#[test]
fn a_deposed_leader_writes_nothing_and_a_standby_takes_over() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let rt = runtime();
    let a = lead(&rt, config(&cluster, "fence", "a"));
    let (told_tx, told) = std::sync::mpsc::channel();
    let b = rt.spawn(EtcdStore::lead(
        config(&cluster, "fence", "b"),
        move |leader| {
            let _ = told_tx.send(leader.to_owned());
        },
    ));
    assert_eq!(
        told.recv_timeout(Duration::from_secs(20)).unwrap(),
        "a",
        "the standby is told who leads"
    );
    assert!(!b.is_finished(), "one leader at a time");
    // A's lease ends behind its back (a pause longer than its TTL would do
    // the same): etcd drops its election key, and the standby is elected.
    let lease = a.inner.fence.lease;
    rt.block_on(async {
        let mut c = Client::connect(cluster.endpoints(), None).await.unwrap();
        c.lease_revoke(lease).await.unwrap();
    });
    let b = rt.block_on(b).unwrap().unwrap();
    let late = Changes {
        revisions: vec![contract::revision(7, 10)],
        ..Changes::default()
    };
    let e = a.commit(&late).unwrap_err();
    assert!(matches!(e, StoreError::Deposed { .. }), "{e}");
    assert!(e.to_string().contains("no longer leads"), "{e}");
    assert!(a.lost().is_cancelled());
    // Nothing of it was written; the new leader writes.
    assert!(b.revision(7).unwrap().is_none());
    assert!(b.load().unwrap().head.is_none());
    b.commit(&Changes {
        revisions: vec![contract::revision(1, 10)],
        ..Changes::default()
    })
    .unwrap();
    assert_eq!(b.history(0).unwrap().len(), 1);
    assert!(!b.lost().is_cancelled());
}

#[test]
fn a_batch_past_its_commit_point_is_applied_by_the_next_leader() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let rt = runtime();
    let a = lead(&rt, config(&cluster, "journal", "a"));
    a.inner.die_at_commit_point.store(true, Ordering::SeqCst);
    let big = Changes {
        revisions: vec![contract::revision(1, 2 << 20)],
        events: (1..=300)
            .map(|seq| Event {
                seq,
                ..Event::default()
            })
            .collect(),
        ..Changes::default()
    };
    a.commit(&big).unwrap();
    // Written only to the journal: not there yet for a reader.
    assert!(a.revision(1).unwrap().is_none());
    drop(a);
    // A died: the next leader replays the journal before it loads.
    let b = lead(&rt, config(&cluster, "journal", "b"));
    let s = b.load().unwrap();
    assert_eq!(s.head.unwrap().megamodel.len(), 2 << 20);
    assert_eq!(s.last_seq, 300);
    assert_eq!(b.event_count().unwrap(), 300);
    let left = rt.block_on(async {
        let mut c = Client::connect(cluster.endpoints(), None).await.unwrap();
        let mut left = 0;
        for table in ["/journal/journal/", "/journal/jparts/"] {
            left += c
                .get(table, Some(GetOptions::new().with_prefix()))
                .await
                .unwrap()
                .count();
        }
        left
    });
    assert_eq!(left, 0, "the journal is emptied once applied");
}

#[test]
fn a_member_lost_changes_nothing_for_the_leader() {
    if !etcd_available() {
        return;
    }
    let mut cluster = EtcdCluster::start(3);
    let rt = runtime();
    let a = lead(&rt, config(&cluster, "member", "a"));
    a.commit(&Changes {
        revisions: vec![contract::revision(1, 10)],
        ..Changes::default()
    })
    .unwrap();
    cluster.kill(0);
    for n in 2..=5 {
        a.commit(&Changes {
            revisions: vec![contract::revision(n, 10)],
            ..Changes::default()
        })
        .unwrap();
    }
    assert_eq!(a.history(0).unwrap().len(), 5);
    assert!(!a.lost().is_cancelled(), "the lease is still renewed");
}

#[test]
fn a_blob_uploaded_to_one_leader_is_served_by_the_next() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let rt = runtime();
    let dirs = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..1_300_000u32).map(|i| (i % 251) as u8).collect();
    let a = std::sync::Arc::new(Store::with_backend(lead(
        &rt,
        config(&cluster, "blobs", "a"),
    )));
    let blobs_a = crate::blobs::BlobStore::open(&dirs.path().join("a"))
        .unwrap()
        .shared_through(std::sync::Arc::clone(&a));
    let digest = blobs_a.put(&bytes).unwrap();
    drop((blobs_a, a));

    let b = std::sync::Arc::new(Store::with_backend(lead(
        &rt,
        config(&cluster, "blobs", "b"),
    )));
    let blobs_b = crate::blobs::BlobStore::open(&dirs.path().join("b"))
        .unwrap()
        .shared_through(std::sync::Arc::clone(&b));
    assert!(!blobs_b.path(&digest).exists());
    assert!(blobs_b.has(&digest), "copied from the shared store");
    assert_eq!(std::fs::read(blobs_b.path(&digest)).unwrap(), bytes);
    assert!(!blobs_b.has(&"0".repeat(64)));

    // Named by no revision and past its grace: forgotten everywhere.
    let keep = std::collections::HashSet::new();
    assert_eq!(blobs_b.collect(&keep, Duration::ZERO).unwrap(), 2);
    let blobs_c = crate::blobs::BlobStore::open(&dirs.path().join("c"))
        .unwrap()
        .shared_through(b);
    assert!(!blobs_c.has(&digest));
}

#[test]
fn a_store_behind_etcd_authentication_needs_its_user() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start(3);
    let rt = runtime();
    rt.block_on(async {
        let mut c = Client::connect(cluster.endpoints(), None).await.unwrap();
        c.user_add("root", "s3cret", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    });
    let mut anonymous = config(&cluster, "auth", "a");
    anonymous.user = None;
    let e = rt
        .block_on(EtcdStore::lead(anonymous, |_| {}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("user name is empty"), "{e}");
    let mut root = config(&cluster, "auth", "a");
    root.user = Some(("root".into(), "s3cret".into()));
    assert!(!format!("{root:?}").contains("s3cret"), "{root:?}");
    let store = lead(&rt, root);
    store
        .commit(&Changes {
            revisions: vec![contract::revision(1, 10)],
            ..Changes::default()
        })
        .unwrap();
    assert_eq!(store.history(0).unwrap().len(), 1);
}
