//! The host's loop: messages from `/<function>/in/#` on the local broker, one
//! handler run each (several at once, up to the concurrency limit), replies on
//! `/<function>/out/<stream>`, failures retried and then dead-lettered on
//! `/<function>/dlq`.
//!
//! Messages are *finished* in the order they arrived: the reply (or dead
//! letter) of a message is published after those of every message before it,
//! it is recorded in the ledger once the broker acknowledged it, and only then
//! is the message itself acknowledged. So a crash at any point loses nothing
//! (an unacknowledged message comes again), a message the ledger knows is
//! never run again, and replies carry their message's id in order, which is
//! what the bridge's de-duplication downstream expects.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use continuum_bus::letters::{
    dead_letter_topic, ATTEMPTS_PROPERTY, REASON_PROPERTY, TOPIC_PROPERTY,
};
use continuum_bus::stats::{stats_topic, FunctionStats};
use continuum_bus::{BrokerUrl, MessageId, ID_PROPERTY};
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::invoke::{invoke, Call, Handler};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;

/// What the host needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The function's id: its topics are `/<function>/…`.
    pub function: String,
    /// The local broker.
    pub broker: BrokerUrl,
    /// The output stream replies are published on.
    pub output: String,
    /// How to run the handler.
    pub handler: Handler,
    /// Handler runs at once, at most.
    pub concurrency: usize,
    /// Runs after the first failed one, at most.
    pub retries: u32,
    /// The pause before the first retry; it doubles for each next one.
    pub backoff: Duration,
    /// Where the ledger lives.
    pub state_dir: std::path::PathBuf,
}

/// Why the host stopped.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The ledger cannot be read or written: continuing could run a message twice.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The user property of a reply or dead letter naming the id of the message
/// it answers.
pub const CAUSE_PROPERTY: &str = "continuum-cause";

/// The topic of the host's status (retained): `running`, or `offline` once it
/// is gone (its will).
pub fn status_topic(function: &str) -> String {
    format!("/{function}/status")
}

/// How often the counters are published when they change.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// The filter of the function's inputs.
pub fn input_filter(function: &str) -> String {
    format!("/{function}/in/#")
}

/// The topic of the function's output `stream`.
pub fn output_topic(function: &str, stream: &str) -> String {
    format!("/{function}/out/{stream}")
}

enum Ev {
    Connected,
    Subscribed,
    Publish(Box<Publish>),
    Sent(u16),
    Acked(u16),
    Lost(String),
}

/// What became of a message's handling.
#[derive(Debug)]
enum Outcome {
    Reply(Vec<u8>),
    Dead { reason: String, attempts: u32 },
}

#[derive(Debug)]
enum Stage {
    /// Not started yet: the host runs only the first `window` messages of its
    /// queue, so a crash makes at most that many run again.
    Waiting,
    /// The handler runs (or waits for a turn).
    Running,
    /// Done; to publish when every message before it is.
    Ready(Outcome),
    /// Published; this many publications await the broker's acknowledgement.
    Sent(usize),
}

struct Entry {
    /// The message, to acknowledge; none once the connection it came on is gone.
    publish: Option<Publish>,
    conn: u64,
    topic: String,
    id: Option<MessageId>,
    /// None: a redelivery of a message handled (or being handled) already,
    /// acknowledged when its turn comes.
    stage: Option<Stage>,
    properties: Vec<(String, String)>,
    payload: Vec<u8>,
}

/// Runs until `shutdown`, or until the ledger fails.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), HostError> {
    let mut ledger = Ledger::open(&config.state_dir)?;
    // What the host holds unacknowledged bounds what a crash makes run again.
    let receive_maximum = (config.concurrency * 4).clamp(16, 1024) as u16;
    // Two sessions: one receives the inputs and acknowledges them, the other
    // publishes replies and the status. A broker that stops acknowledging a
    // session's publications while that session holds its most unacknowledged
    // deliveries (rumqttd 0.20 does, at 100) would otherwise deadlock the
    // host, which acknowledges an input only once its reply is acknowledged.
    let mut o = options(&config, "", receive_maximum);
    o.set_last_will(LastWill::new(
        status_topic(&config.function),
        r#"{"state":"offline"}"#,
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, eventloop) = AsyncClient::new(o, 1024);
    let (out, out_eventloop) = AsyncClient::new(options(&config, "-out", receive_maximum), 1024);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    pump(
        eventloop,
        Session::Inputs,
        config.broker.clone(),
        events_tx.clone(),
        shutdown.clone(),
    );
    pump(
        out_eventloop,
        Session::Outputs,
        config.broker.clone(),
        events_tx,
        shutdown.clone(),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, Outcome)>();
    let mut host = Host {
        config: Arc::new(config),
        metrics,
        client,
        out,
        turns: Arc::new(Semaphore::new(0)),
        queue: VecDeque::new(),
        first: 0,
        next_to_send: 0,
        in_flight: HashSet::new(),
        unsent: VecDeque::new(),
        sent: HashMap::new(),
        conn: 0,
        window: usize::from(receive_maximum),
        done_tx,
        reported: None,
    };
    host.turns.add_permits(host.config.concurrency.max(1));
    let mut report = tokio::time::interval(STATS_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = report.tick() => host.report_stats().await,
            ev = events.recv() => match ev {
                None => break,
                Some(ev) => host.on_event(ev, &ledger).await,
            },
            Some((seq, outcome)) = done_rx.recv() => host.on_done(seq, outcome),
        }
        host.advance(&mut ledger).await?;
    }
    host.report_stats().await;
    let _ = host
        .out
        .publish(
            status_topic(&host.config.function),
            QoS::AtLeastOnce,
            true,
            r#"{"state":"offline"}"#,
        )
        .await;
    let _ = host.out.disconnect().await;
    let _ = host.client.disconnect().await;
    Ok(())
}

/// The options of one of the host's two sessions (`suffix` tells them apart).
fn options(config: &Config, suffix: &str, receive_maximum: u16) -> MqttOptions {
    let mut o = MqttOptions::new(
        format!("continuum-fn-{}{suffix}", config.function),
        &config.broker.host,
        config.broker.port,
    );
    o.set_keep_alive(Duration::from_secs(15))
        .set_clean_start(false)
        // The broker keeps the subscription and what arrives while the host is
        // away (a restart, an upgrade): 0xFFFFFFFF never expires.
        .set_session_expiry_interval(Some(u32::MAX))
        .set_manual_acks(true)
        .set_receive_maximum(Some(receive_maximum))
        .set_connection_timeout(10)
        .set_network_options(continuum_bus::client::network_options(10));
    if let Some((u, p)) = &config.broker.credentials {
        o.set_credentials(u, p);
    }
    o
}

struct Host {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// The inputs' session: subscribes and acknowledges.
    client: AsyncClient,
    /// The outputs' session: publishes.
    out: AsyncClient,
    turns: Arc<Semaphore>,
    /// Messages in arrival order; `first` is the number of the front one.
    queue: VecDeque<Entry>,
    first: u64,
    /// The number of the first entry not yet published.
    next_to_send: u64,
    /// (topic, id) of the messages in the queue that run.
    in_flight: HashSet<(String, MessageId)>,
    /// Publications requested and not yet seen leaving, oldest first, with the
    /// entry each belongs to (none: the status).
    unsent: VecDeque<Option<u64>>,
    /// Publications gone out and not yet acknowledged, by packet id.
    sent: HashMap<u16, Option<u64>>,
    /// The current connection's number.
    conn: u64,
    /// Messages at the front of the queue that may run.
    window: usize,
    done_tx: mpsc::UnboundedSender<(u64, Outcome)>,
    /// The counters last published on the stats topic.
    reported: Option<FunctionStats>,
}

impl Host {
    async fn on_event(&mut self, ev: Ev, ledger: &Ledger) {
        match ev {
            Ev::Connected => {
                self.conn += 1;
                // Redeliveries of what the old connection brought will come on
                // this one: acknowledge those, not the old copies.
                for e in &mut self.queue {
                    if e.conn != self.conn {
                        e.publish = None;
                    }
                }
                let filter = input_filter(&self.config.function);
                if let Err(e) = self.client.subscribe(filter, QoS::AtLeastOnce).await {
                    tracing::warn!(error = %e, "cannot subscribe");
                }
            }
            Ev::Subscribed => {
                tracing::info!(function = %self.config.function, "subscribed; running");
                self.unsent.push_back(None);
                let _ = self
                    .out
                    .publish(
                        status_topic(&self.config.function),
                        QoS::AtLeastOnce,
                        true,
                        format!(r#"{{"state":"running","pid":{}}}"#, std::process::id()),
                    )
                    .await;
                // The gateway learns this host's start even before it runs anything.
                self.reported = None;
                self.report_stats().await;
            }
            Ev::Publish(p) => self.on_message(*p, ledger),
            Ev::Sent(pkid) => {
                // A publication the client sends again after a reconnection
                // keeps its packet id.
                if !self.sent.contains_key(&pkid) {
                    if let Some(owner) = self.unsent.pop_front() {
                        self.sent.insert(pkid, owner);
                    }
                }
            }
            Ev::Acked(pkid) => {
                if let Some(Some(seq)) = self.sent.remove(&pkid) {
                    if let Some(Entry {
                        stage: Some(Stage::Sent(n)),
                        ..
                    }) = self.entry_mut(seq)
                    {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            Ev::Lost(why) => tracing::warn!(broker = %self.config.broker, %why, "connection lost"),
        }
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.queue.get_mut(i)
    }

    fn on_message(&mut self, p: Publish, ledger: &Ledger) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let props: Vec<(String, String)> = p
            .properties
            .as_ref()
            .map(|pr| pr.user_properties.clone())
            .unwrap_or_default();
        let mut entry = Entry {
            publish: None,
            conn: self.conn,
            topic: topic.clone(),
            id: None,
            stage: Some(Stage::Waiting),
            properties: props
                .iter()
                .filter(|(k, _)| k != ID_PROPERTY)
                .cloned()
                .collect(),
            payload: p.payload.to_vec(),
        };
        match MessageId::from_properties(&props) {
            Err(e) => {
                entry.stage = Some(Stage::Ready(Outcome::Dead {
                    reason: e.to_string(),
                    attempts: 0,
                }));
            }
            Ok(Some(id)) if ledger.handled(&topic, &id) => {
                self.metrics.duplicates.inc();
                entry.stage = None;
            }
            Ok(Some(id)) if self.in_flight.contains(&(topic.clone(), id.clone())) => {
                self.metrics.duplicates.inc();
                entry.stage = None;
            }
            Ok(id) => {
                if let Some(id) = &id {
                    self.in_flight.insert((topic.clone(), id.clone()));
                }
                entry.id = id;
            }
        }
        entry.publish = Some(p);
        self.queue.push_back(entry);
    }

    /// Starts the handler on the waiting messages among the first `window`.
    fn start_waiting(&mut self) {
        let window = self.window.min(self.queue.len());
        for i in 0..window {
            if matches!(self.queue[i].stage, Some(Stage::Waiting)) {
                self.queue[i].stage = Some(Stage::Running);
                self.spawn(self.first + i as u64, &self.queue[i]);
            }
        }
    }

    fn spawn(&self, seq: u64, entry: &Entry) {
        let config = Arc::clone(&self.config);
        let metrics = Arc::clone(&self.metrics);
        let turns = Arc::clone(&self.turns);
        let done = self.done_tx.clone();
        let topic = entry.topic.clone();
        let id = entry.id.as_ref().map(ToString::to_string);
        let payload = entry.payload.clone();
        tokio::spawn(async move {
            let outcome = handle(&config, &metrics, &turns, &topic, id.as_deref(), &payload).await;
            let _ = done.send((seq, outcome));
        });
    }

    /// Publishes the counters (retained) when they changed since last time.
    async fn report_stats(&mut self) {
        let now = self.metrics.stats();
        if self.reported.as_ref() == Some(&now) {
            return;
        }
        let body = serde_json::to_vec(&now).expect("counters serialise");
        self.unsent.push_back(None);
        match self
            .out
            .publish(
                stats_topic(&self.config.function),
                QoS::AtLeastOnce,
                true,
                body,
            )
            .await
        {
            Ok(()) => self.reported = Some(now),
            Err(e) => {
                self.unsent.pop_back();
                tracing::warn!(error = %e, "cannot queue the counters");
            }
        }
    }

    fn on_done(&mut self, seq: u64, outcome: Outcome) {
        if let Some(e) = self.entry_mut(seq) {
            e.stage = Some(Stage::Ready(outcome));
        }
    }

    /// Publishes what is ready in order, then finishes the front messages whose
    /// publications the broker acknowledged.
    async fn advance(&mut self, ledger: &mut Ledger) -> Result<(), HostError> {
        self.start_waiting();
        while let Some(i) = self
            .next_to_send
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.queue.len())
        {
            let seq = self.next_to_send;
            let entry = &mut self.queue[i];
            let publications = match &entry.stage {
                None | Some(Stage::Sent(_)) => Vec::new(),
                Some(Stage::Waiting | Stage::Running) => break,
                Some(Stage::Ready(outcome)) => publications(&self.config, entry, outcome),
            };
            if entry.stage.is_some() {
                entry.stage = Some(Stage::Sent(publications.len()));
            }
            for (topic, payload, props) in publications {
                self.unsent.push_back(Some(seq));
                let props = PublishProperties {
                    user_properties: props,
                    ..PublishProperties::default()
                };
                if let Err(e) = self
                    .out
                    .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
                    .await
                {
                    tracing::warn!(error = %e, "cannot queue a publication");
                }
            }
            self.next_to_send += 1;
        }
        // Everything finished at the front is recorded with one flush, then acknowledged.
        let mut finished = Vec::new();
        while let Some(front) = self.queue.front() {
            if !matches!(front.stage, None | Some(Stage::Sent(0))) {
                break;
            }
            finished.push(self.queue.pop_front().expect("a front entry"));
            self.first += 1;
        }
        if finished.is_empty() {
            return Ok(());
        }
        let handled: Vec<(&str, &MessageId)> = finished
            .iter()
            .filter(|e| e.stage.is_some())
            .filter_map(|e| e.id.as_ref().map(|id| (e.topic.as_str(), id)))
            .collect();
        ledger.record(&handled)?;
        for e in finished {
            if let (Some(id), Some(_)) = (&e.id, &e.stage) {
                self.in_flight.remove(&(e.topic.clone(), id.clone()));
            }
            if let Some(p) = e.publish.filter(|_| e.conn == self.conn) {
                if let Err(err) = self.client.ack(&p).await {
                    tracing::warn!(error = %err, "cannot acknowledge");
                }
            }
        }
        self.next_to_send = self.next_to_send.max(self.first);
        // Room was made at the front: what waited behind may run now.
        self.start_waiting();
        Ok(())
    }
}

/// What finishing `entry` publishes: its reply on the output stream, or its
/// dead letter.
/// A message to publish: topic, payload, user properties.
type Publication = (String, Vec<u8>, Vec<(String, String)>);

fn publications(config: &Config, entry: &Entry, outcome: &Outcome) -> Vec<Publication> {
    let mut props = Vec::with_capacity(entry.properties.len() + 5);
    if let Some(id) = &entry.id {
        // The reply's id follows from its message's, so a reply published
        // again after a crash is recognised downstream; it has an origin of
        // its own, since the message's may be the bridge's, which drops what
        // looks like its own messages coming back.
        let reply = MessageId {
            origin: format!("fn/{}/{}", config.function, id.origin),
            seq: id.seq,
        };
        props.push((ID_PROPERTY.to_owned(), reply.to_string()));
        props.push((CAUSE_PROPERTY.to_owned(), id.to_string()));
    }
    props.extend(entry.properties.iter().cloned());
    match outcome {
        // A handler that prints nothing filters the message out.
        Outcome::Reply(out) if out.is_empty() => Vec::new(),
        Outcome::Reply(out) => vec![(
            output_topic(&config.function, &config.output),
            out.clone(),
            props,
        )],
        Outcome::Dead { reason, attempts } => {
            props.push((REASON_PROPERTY.to_owned(), reason.clone()));
            props.push((TOPIC_PROPERTY.to_owned(), entry.topic.clone()));
            props.push((ATTEMPTS_PROPERTY.to_owned(), attempts.to_string()));
            vec![(
                dead_letter_topic(&config.function),
                entry.payload.clone(),
                props,
            )]
        }
    }
}

/// Runs the handler on one message until it succeeds or has no retry left.
async fn handle(
    config: &Config,
    metrics: &Metrics,
    turns: &Semaphore,
    topic: &str,
    id: Option<&str>,
    payload: &[u8],
) -> Outcome {
    let mut attempt = 1;
    loop {
        let result = {
            let _turn = turns.acquire().await.expect("the semaphore stays open");
            let started = tokio::time::Instant::now();
            let call = Call {
                function: &config.function,
                topic,
                id,
                payload,
                attempt,
            };
            let r = invoke(&config.handler, call).await;
            metrics.observe(started.elapsed(), &r);
            r
        };
        match result {
            Ok(out) => return Outcome::Reply(out),
            Err(failure) if attempt > config.retries => {
                metrics.dead_letters.inc();
                tracing::warn!(%topic, id, attempts = attempt, %failure, "dead-lettered");
                return Outcome::Dead {
                    reason: failure.to_string(),
                    attempts: attempt,
                };
            }
            Err(failure) => {
                metrics.retries.inc();
                let pause = config
                    .backoff
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(Duration::from_secs(60));
                tracing::info!(%topic, id, attempt, %failure, ?pause, "retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

/// Which of the host's two sessions an event loop drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    Inputs,
    Outputs,
}

/// Polls an event loop for ever (it reconnects by itself on the next poll),
/// passing on what the host needs of that session, and pausing between
/// failed attempts.
fn pump(
    mut eventloop: EventLoop,
    session: Session,
    broker: BrokerUrl,
    tx: mpsc::UnboundedSender<Ev>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = eventloop.poll() => ev,
            };
            let ev = match (session, ev) {
                (_, Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    pause = Duration::from_millis(100);
                    if session == Session::Outputs {
                        continue;
                    }
                    Ev::Connected
                }
                (Session::Inputs, Ok(Event::Incoming(Packet::SubAck(_)))) => Ev::Subscribed,
                (Session::Inputs, Ok(Event::Incoming(Packet::Publish(p)))) => {
                    Ev::Publish(Box::new(p))
                }
                (Session::Outputs, Ok(Event::Incoming(Packet::PubAck(a)))) => Ev::Acked(a.pkid),
                (Session::Outputs, Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid)))) => {
                    Ev::Sent(pkid)
                }
                (_, Ok(_)) => continue,
                (_, Err(e)) => {
                    if tx
                        .send(Ev::Lost(format!("{broker} ({session:?}): {e}")))
                        .is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
}
