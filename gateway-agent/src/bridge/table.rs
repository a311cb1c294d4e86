//! The routes the bridge carries, by owner: persisted, so a restarted agent
//! carries them again at once, and published to the sessions that subscribe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use continuum_models::route::{Direction, Route};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

const ROUTES: TableDefinition<&str, &str> = TableDefinition::new("bridge.routes");

#[derive(Debug, thiserror::Error)]
#[error("bridge routes: {0}")]
pub struct TableError(String);

fn err(e: impl std::fmt::Display) -> TableError {
    TableError(e.to_string())
}

/// The routes of one direction, as the sessions see them.
pub type RouteSet = Arc<Vec<Route>>;

#[derive(Debug)]
pub struct Table {
    db: Arc<Database>,
    routes: Mutex<BTreeMap<String, Vec<Route>>>,
    inbound: watch::Sender<RouteSet>,
    outbound: watch::Sender<RouteSet>,
}

impl Table {
    pub fn open(db: Arc<Database>) -> Result<Table, TableError> {
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(ROUTES).map_err(err)?;
        txn.commit().map_err(err)?;
        let mut routes = BTreeMap::new();
        {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(ROUTES).map_err(err)?;
            for e in t.iter().map_err(err)? {
                let (k, v) = e.map_err(err)?;
                let r: Vec<Route> = serde_json::from_str(v.value())
                    .map_err(|e| err(format!("routes of `{}` do not parse: {e}", k.value())))?;
                routes.insert(k.value().to_owned(), r);
            }
        }
        let table = Table {
            db,
            routes: Mutex::new(BTreeMap::new()),
            inbound: watch::channel(Arc::new(Vec::new())).0,
            outbound: watch::channel(Arc::new(Vec::new())).0,
        };
        *table.lock() = routes;
        table.publish();
        Ok(table)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Route>>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self) {
        let all = self.lock();
        for (d, tx) in [
            (Direction::In, &self.inbound),
            (Direction::Out, &self.outbound),
        ] {
            let set: Vec<Route> = all
                .values()
                .flatten()
                .filter(|r| r.direction == d)
                .cloned()
                .collect();
            tx.send_if_modified(|old| {
                if **old == set {
                    false
                } else {
                    *old = Arc::new(set);
                    true
                }
            });
        }
    }

    /// Makes `owner`'s routes exactly `routes`, durably.
    pub fn set(&self, owner: &str, routes: Vec<Route>) -> Result<(), TableError> {
        if self
            .lock()
            .get(owner)
            .map_or(routes.is_empty(), |r| *r == routes)
        {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut t = txn.open_table(ROUTES).map_err(err)?;
            if routes.is_empty() {
                t.remove(owner).map_err(err)?;
            } else {
                let json = serde_json::to_string(&routes).map_err(err)?;
                t.insert(owner, json.as_str()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        for r in &routes {
            tracing::info!(owner, route = %r, "route carried");
        }
        {
            let mut all = self.lock();
            if routes.is_empty() {
                all.remove(owner);
            } else {
                all.insert(owner.to_owned(), routes);
            }
        }
        self.publish();
        Ok(())
    }

    pub fn all(&self) -> BTreeMap<String, Vec<Route>> {
        self.lock().clone()
    }

    pub fn watch(&self, d: Direction) -> watch::Receiver<RouteSet> {
        match d {
            Direction::In => self.inbound.subscribe(),
            Direction::Out => self.outbound.subscribe(),
        }
    }
}

/// The distinct filters of a route set.
pub fn filters(routes: &[Route]) -> BTreeSet<String> {
    routes.iter().map(|r| r.filter.clone()).collect()
}
