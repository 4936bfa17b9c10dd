//! runsignal: a run orchestrator built as an actor runtime.
//!
//! [`Application::build`] wires the store, the run-actor runtime, the cache
//! and the HTTP server together and binds the listener (port 0 in tests);
//! [`Application::run_until_stopped`] serves until a signal stops it.

pub mod artifacts;
pub mod auth;
pub mod blocked;
pub mod cache;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod executor;
pub mod http;
pub mod loader;
pub mod metrics;
pub mod openapi;
pub mod packs;
pub mod paths;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod transport;
pub mod wakeups;
pub mod webhooks;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use runsignal_actors::{ActorConfig, Supervisor};
use tokio::sync::Notify;

use cache::{FirstSignalCache, InMemoryCache};
use config::Config;
use engine::Engine;
use loader::StoreLoader;
use metrics::Metrics;
use packs::Packs;
use store::{QueryCounter, Store};

/// Everything a handler or background task needs; shared read-only.
pub struct AppState {
    pub config: Config,
    /// This process's id among the nodes (a ULID, new at every start).
    pub node_id: String,
    pub store: Arc<Store>,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub packs: Packs,
    pub queries: Arc<QueryCounter>,
    /// Checks bearer credentials (`Auth.Mode`); keys loaded at start-up.
    pub auth: auth::Authenticator,
    /// Turns true when the process is stopping: open streams end cleanly.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Admission of SSE streams, WebSocket sockets and subscriptions.
    pub stream_limits: Arc<http::limits::StreamLimits>,
    /// Open connections against `Limits.MaxConnections`.
    pub connections: Arc<http::limits::ConnectionLimit>,
    /// What could take a queued job: workers asking, executor slots
    /// (the blocked check, `src/blocked.rs`).
    pub demand: Arc<blocked::Demand>,
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    stopper: Stopper,
}

/// Graceful stop: refuse new connections, end open streams (clients get a
/// `timeout` event and reconnect elsewhere), let in-flight requests finish
/// within `Server.ShutdownTimeoutSeconds`.
#[derive(Clone)]
pub struct Stopper {
    server: actix_web::dev::ServerHandle,
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Stopper {
    pub async fn stop(&self) {
        tracing::info!("stopping: ending open streams and finishing in-flight requests");
        self.stopping.send_replace(true);
        self.server.stop(true).await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registering a handler fails only outside a runtime or on exotic
        // platforms; then Ctrl-C alone stops the process.
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Open the configured store (creating and migrating it) and start its
/// writer.
pub async fn open_store(config: &Config, queries: Arc<QueryCounter>) -> anyhow::Result<Arc<Store>> {
    let store = Store::open(
        &config.database.url,
        config.database.max_connections,
        config.database.write_lanes,
        queries,
    )
    .await
    .with_context(|| {
        format!(
            "opening the store at Database.Url = {}",
            redact(&config.database.url)
        )
    })?;
    Ok(Arc::new(store))
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Application {
    /// Open the store, load packs, start the runtime and bind the listener.
    /// Must run inside an actix system (`#[actix_web::main]`, `#[actix_web::test]`).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let is_default_packs = config.executor.packs_dir == Config::defaults().executor.packs_dir;
        let packs = Packs::load(&config.executor.packs_dir, is_default_packs)?;
        let auth = auth::Authenticator::from_config(&config.auth)?;
        let queries = Arc::new(QueryCounter::default());
        let store = open_store(&config, queries.clone()).await?;
        store.declare_steps(packs.declared_steps());
        let metrics = Arc::new(Metrics::new());
        let cache: Arc<dyn FirstSignalCache> = match config.first_signal.cache.backend.as_str() {
            "redis" => cache::redis::RedisCache::start(
                config.redis.url.as_deref().unwrap_or_default(),
                &config.first_signal.cache,
            )?,
            _ => Arc::new(InMemoryCache::new(&config.first_signal.cache)),
        };
        let loader = Arc::new(StoreLoader {
            store: store.clone(),
            cache: cache.clone(),
            metrics: metrics.clone(),
        });
        let supervisor = Supervisor::new(
            loader,
            ActorConfig {
                idle_evict: Duration::from_secs(config.actors.idle_evict_seconds),
                max_resident: config.actors.max_resident,
                mailbox_capacity: config.actors.mailbox_capacity,
                threads: config.actors.threads(),
            },
        );
        let engine = Engine {
            supervisor,
            cache,
            queued: Arc::new(wakeups::QueuedWakeups::default()),
            webhooks: Arc::new(Notify::new()),
            metrics: metrics.clone(),
            transport: Arc::new(std::sync::OnceLock::new()),
        };
        let node_id = runsignal_actors::new_ulid();
        let transport: transport::SharedTransport = match config.messaging.transport.as_str() {
            "redis" => transport::redis::RedisTransport::start(
                config.redis.url.as_deref().unwrap_or_default(),
                &config.first_signal.cache.key_prefix,
                &node_id,
                engine.clone(),
            )?,
            _ => Arc::new(transport::InMemory),
        };
        let _ = engine.transport.set(transport);
        store.attach(Arc::new(engine.clone()));
        let dispatcher = webhooks::Dispatcher::new(
            &config.webhooks,
            store.clone(),
            engine.webhooks.clone(),
            metrics.clone(),
            config.messaging.transport != "inmemory",
        )?
        .recover()
        .await?;
        let listener = TcpListener::bind(&config.server.bind)
            .with_context(|| format!("binding Server.Bind = {}", config.server.bind))?;
        let port = listener.local_addr()?.port();
        let workers = config.server.workers;
        let shutdown_timeout = config.server.shutdown_timeout_seconds;
        let (stopping, shutdown) = tokio::sync::watch::channel(false);
        let max_connections = config.limits.max_connections();
        let connections = http::limits::ConnectionLimit::new(max_connections);
        let max_jobs = config.executor.max_concurrent_jobs;
        let stream_limits = http::limits::StreamLimits::new(&config.limits, max_connections);
        let state = web::Data::new(AppState {
            config,
            node_id,
            store,
            engine,
            metrics,
            packs,
            queries,
            auth,
            shutdown,
            stream_limits,
            connections: connections.clone(),
            demand: Arc::new(blocked::Demand::new(max_jobs)),
        });
        let app_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                // Innermost: after authentication, before routing.
                .wrap(from_fn(http::first_signal::hot))
                .wrap(
                    ErrorHandlers::new()
                        .handler(StatusCode::METHOD_NOT_ALLOWED, http::method_not_allowed),
                )
                .wrap(from_fn(http::auth::authenticate))
                .wrap(http::auth::cors(&app_state.config.server.cors))
                .wrap(from_fn(http::observe))
                .configure(http::routes)
                .configure(|cfg| {
                    if app_state.config.dashboard.enabled {
                        dashboard::routes(cfg);
                    }
                })
                // Here, not in `http::routes`: the document is assembled
                // from the handlers, which never refer to it.
                .service(web::resource("/openapi.json").get(openapi::serve))
                .default_service(web::to(http::not_found))
        })
        .on_connect(move |io, ext| connections.on_connect(io, ext))
        // Streams write small frames one by one: with Nagle's algorithm on
        // (the OS default actix keeps), a frame waits for the ACK of the
        // previous one, which a client may delay by up to 40 ms (ADR 0043).
        .tcp_nodelay(true)
        .listen(listener)?
        // Signals are ours (see `run_until_stopped`): streams must end first.
        .disable_signals()
        .shutdown_timeout(shutdown_timeout);
        if workers > 0 {
            server = server.workers(workers);
        }
        tasks::spawn_all(state.clone().into_inner());
        actix_rt::spawn(executor::run(state.clone().into_inner()));
        actix_rt::spawn(dispatcher.run(state.shutdown.clone()));
        tracing::info!(port, max_connections, "runsignal listening");
        let server = server.run();
        let stopper = Stopper {
            server: server.handle(),
            stopping: Arc::new(stopping),
        };
        Ok(Application {
            port,
            server,
            state,
            stopper,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Shared state (tests read counters from it).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Stops the server from another task (tests restart with it).
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serve until SIGTERM or SIGINT (or a [`Stopper`]), then stop gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let stopper = self.stopper.clone();
        actix_rt::spawn(async move {
            wait_for_signal().await;
            stopper.stop().await;
        });
        let served = self.server.await;
        // Last, once no stream is left: the run actors' threads.
        self.state.engine.supervisor.shutdown();
        served
    }
}
