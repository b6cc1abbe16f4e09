//! The fleet: hosts sharing a Redis (and a key prefix) act on one another's plugin reloads
//! and report what they serve.
//!
//! - An admin reload that succeeds on one host is announced on the channel
//!   `<prefix>:fleet:reloads`; every other host reloads that plugin from its own
//!   `PLUGINS_DIR`, independently (its own checks, its own refusal if the files it has do
//!   not pass them).
//! - Every host writes a report (host id, the versions and hashes it serves, the last
//!   refusal per plugin, when) to the hash `<prefix>:fleet:hosts` every
//!   [`REPORT_EVERY`], and at once after a reload it was told of. `GET /admin/fleet` reads
//!   them, with how long ago each host last reported.
//!
//! Without Redis there is no fleet: nothing is announced and the view lists this host only.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::capabilities::kv::KvStore;
use crate::plugins::Registry;

/// How often a host reports what it serves.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Reports of hosts silent for this long are dropped from the view (and from Redis).
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// A reload announcement on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    host: String,
    plugin: String,
}

/// One host's report in the fleet hash.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    host: String,
    /// RFC 3339, UTC.
    reported_at: String,
    plugins: Vec<ServedPlugin>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ServedPlugin {
    name: String,
    version: String,
    content_hash: String,
    /// Why the last change to this plugin was refused on this host, if it was.
    refused: Option<String>,
}

#[derive(Debug)]
pub struct Fleet {
    host_id: String,
    kv: KvStore,
    channel: String,
    hosts_key: String,
}

impl Fleet {
    pub fn new(host_id: String, kv: KvStore, key_prefix: &str) -> Self {
        Self {
            host_id,
            kv,
            channel: format!("{key_prefix}:fleet:reloads"),
            hosts_key: format!("{key_prefix}:fleet:hosts"),
        }
    }

    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// Tells the other hosts that `plugin` was reloaded here. A failure is logged: the
    /// reload itself stands, and the other hosts' watchers or operators can still act.
    pub async fn announce_reload(&self, plugin: &str) {
        let announcement = Announcement {
            host: self.host_id.clone(),
            plugin: plugin.to_owned(),
        };
        let Ok(payload) = serde_json::to_vec(&announcement) else {
            return;
        };
        if let Err(err) = self.kv.publish(&self.channel, &payload).await {
            tracing::warn!(error = %err, %plugin, "could not announce the reload to the fleet");
        }
    }

    /// Listens for other hosts' reloads and reports this host's versions, until the
    /// returned task is aborted. Does nothing without Redis.
    pub fn spawn(self: Arc<Self>, registry: Arc<Registry>) -> Option<tokio::task::JoinHandle<()>> {
        let mut announcements = self.kv.subscribe(self.channel.clone())?;
        Some(tokio::spawn(async move {
            let mut report_timer = tokio::time::interval(REPORT_EVERY);
            loop {
                tokio::select! {
                    message = announcements.recv() => {
                        let Some(message) = message else { return };
                        self.act_on(&message, &registry).await;
                        self.report(&registry).await;
                    }
                    _ = report_timer.tick() => self.report(&registry).await,
                }
            }
        }))
    }

    async fn act_on(&self, message: &[u8], registry: &Registry) {
        let Ok(announcement) = serde_json::from_slice::<Announcement>(message) else {
            tracing::warn!("ignored a malformed fleet announcement");
            return;
        };
        if announcement.host == self.host_id {
            return;
        }
        match registry.reload(&announcement.plugin).await {
            Ok(plugin) => tracing::info!(
                plugin = %plugin.name,
                version = %plugin.version,
                from = %announcement.host,
                "reloaded as announced by another host"
            ),
            // Refusals are logged and recorded by the registry; an unknown plugin is one
            // this host was never given.
            Err(err) => tracing::warn!(
                plugin = %announcement.plugin,
                from = %announcement.host,
                error = ?err,
                "a reload announced by another host did not apply here"
            ),
        }
    }

    fn own_report(&self, registry: &Registry) -> Report {
        let table = registry.snapshot();
        Report {
            host: self.host_id.clone(),
            reported_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            plugins: table
                .plugins()
                .iter()
                .map(|plugin| ServedPlugin {
                    name: plugin.name.clone(),
                    version: plugin.version.clone(),
                    content_hash: plugin.content_hash.clone(),
                    refused: registry.last_error(&plugin.name),
                })
                .collect(),
        }
    }

    async fn report(&self, registry: &Registry) {
        let report = self.own_report(registry);
        let Ok(value) = serde_json::to_vec(&report) else {
            return;
        };
        if let Err(err) = self
            .kv
            .hash_set(&self.hosts_key, &self.host_id, &value, FORGET_AFTER)
            .await
        {
            tracing::debug!(error = %err, "could not report to the fleet");
        }
    }

    /// Every host's last report (this host's as of now), with the seconds since each.
    pub async fn view(
        &self,
        registry: &Registry,
    ) -> Result<Value, crate::capabilities::kv::KvError> {
        let mut reports: Vec<Report> = Vec::new();
        for (host, value) in self.kv.hash_get_all(&self.hosts_key).await? {
            if host == self.host_id {
                continue;
            }
            match serde_json::from_slice::<Report>(&value) {
                Ok(report) => reports.push(report),
                Err(_) => tracing::warn!(%host, "ignored a malformed fleet report"),
            }
        }
        reports.push(self.own_report(registry));
        let now = Utc::now();
        let mut hosts = Vec::new();
        for report in reports {
            let age = chrono::DateTime::parse_from_rfc3339(&report.reported_at)
                .map(|at| (now - at.with_timezone(&Utc)).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(f64::INFINITY);
            if age > FORGET_AFTER.as_secs_f64() {
                let _ = self.kv.hash_delete(&self.hosts_key, &report.host).await;
                continue;
            }
            hosts.push(json!({
                "host": report.host,
                "this_host": report.host == self.host_id,
                "reported_at": report.reported_at,
                "seconds_since_report": age.max(0.0),
                "plugins": report.plugins,
            }));
        }
        hosts.sort_by(|a, b| a["host"].as_str().cmp(&b["host"].as_str()));
        Ok(json!({ "hosts": hosts }))
    }
}
