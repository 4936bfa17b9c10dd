use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_the_spec() {
    let c = Config::defaults();
    assert_eq!(c.server.bind, "127.0.0.1:8080");
    assert_eq!(c.database.url, "sqlite://data/runsignal.db");
    assert_eq!(c.first_signal.cache.ttl_seconds, 86400);
    assert_eq!(
        c.first_signal.cache.key_prefix,
        "orchestrator:first_signal:"
    );
    assert_eq!(c.first_signal.cold_path.timeout_ms, 3000);
    assert!(!c.first_signal.snapshot_writer.enabled);
    assert_eq!(c.streams.heartbeat_interval_seconds, 15);
    assert_eq!(c.jobs.max_attempts, 3);
    assert_eq!(c.jobs.blocked_after_seconds, 30);
    assert_eq!(c.executor.packs_dir, "config/packs");
}

#[test]
fn blocked_after_seconds_is_validated() {
    let err = |v: &str| {
        Config::load_from(None, env(&[("RUNSIGNAL__Jobs__BlockedAfterSeconds", v)]))
            .unwrap_err()
            .to_string()
    };
    for bad in ["0", "86401", "-1", "soon"] {
        let e = err(bad);
        assert!(e.contains("Jobs.BlockedAfterSeconds"), "{bad}: {e}");
    }
    assert!(err("0").contains("1..=86400"));
    let ok = Config::load_from(None, env(&[("RUNSIGNAL__Jobs__BlockedAfterSeconds", "1")]));
    assert_eq!(ok.unwrap().jobs.blocked_after_seconds, 1);
}

#[test]
fn env_overrides_match_keys_case_insensitively_and_parse_types() {
    let c = Config::load_from(
        None,
        env(&[
            ("RUNSIGNAL__firstsignal__CACHE__ttlseconds", "10"),
            ("RUNSIGNAL__FirstSignal__Cache__SlidingExpiration", "false"),
            ("RUNSIGNAL__Server__Bind", "127.0.0.1:0"),
            ("RUNSIGNAL__FirstSignal__SnapshotWriter__TenantId", "1234"),
            ("RUNSIGNAL__Webhooks__Secrets__0", "whsec_abc"),
            ("RUNSIGNAL__Webhooks__Secrets__1", "42"),
            ("RUNSIGNAL_TEST_DATABASE_URL", "ignored: single underscore"),
        ]),
    )
    .unwrap();
    assert_eq!(c.first_signal.cache.ttl_seconds, 10);
    assert!(!c.first_signal.cache.sliding_expiration);
    assert_eq!(c.server.bind, "127.0.0.1:0");
    assert_eq!(
        c.first_signal.snapshot_writer.tenant_id.as_deref(),
        Some("1234")
    );
    assert_eq!(
        c.webhooks.secrets,
        vec!["whsec_abc".to_string(), "42".to_string()]
    );
}

#[test]
fn env_list_items_apply_in_numeric_index_order() {
    let vars: Vec<(String, String)> = (0..12)
        .rev()
        .map(|i| {
            (
                format!("RUNSIGNAL__Webhooks__Secrets__{i}"),
                format!("s{i}"),
            )
        })
        .collect();
    let c = Config::load_from(None, vars).unwrap();
    let want: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    assert_eq!(c.webhooks.secrets, want);
}

#[test]
fn file_layers_under_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        r#"{"actors": {"maxresident": 5, "IdleEvictSeconds": 9}}"#,
    )
    .unwrap();
    let c =
        Config::load_from(Some(&path), env(&[("RUNSIGNAL__Actors__MaxResident", "7")])).unwrap();
    assert_eq!(c.actors.max_resident, 7, "env wins over file");
    assert_eq!(c.actors.idle_evict_seconds, 9, "file wins over defaults");
    assert_eq!(
        c.actors.mailbox_capacity, 1024,
        "untouched keys keep defaults"
    );
}

#[test]
fn errors_name_the_key_and_the_allowed_values() {
    let err = |pairs: &[(&str, &str)]| Config::load_from(None, env(pairs)).unwrap_err().to_string();
    let e = err(&[("RUNSIGNAL__FirstSignal__Cache__Backend", "memcached")]);
    assert!(
        e.contains("FirstSignal.Cache.Backend") && e.contains("inmemory"),
        "{e}"
    );
    let e = err(&[("RUNSIGNAL__Server__Bind", "not an address")]);
    assert!(e.contains("Server.Bind"), "{e}");
    let e = err(&[("RUNSIGNAL__Jobs__MaxAttempts", "many")]);
    assert!(e.contains("Jobs.MaxAttempts"), "{e}");
    let e = err(&[("RUNSIGNAL__Jobs__MaxAttemps", "3")]);
    assert!(
        e.contains("unknown configuration key") && e.contains("MaxAttemps"),
        "{e}"
    );
    let e = err(&[("RUNSIGNAL__Logging__Format", "xml")]);
    assert!(
        e.contains("Logging.Format") && e.contains("pretty, json"),
        "{e}"
    );
    let e = err(&[("RUNSIGNAL__Database__Url", "mysql://x")]);
    assert!(e.contains("Database.Url") && e.contains("sqlite://"), "{e}");
}

#[test]
fn unknown_file_key_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, r#"{"Server": {"Bnd": "x"}}"#).unwrap();
    let e = Config::load_from(Some(&path), vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("Server.Bnd") && e.contains("c.json"), "{e}");
}

#[test]
fn webhook_timing_is_validated() {
    let err = |pairs: &[(&str, &str)]| Config::load_from(None, env(pairs)).unwrap_err().to_string();
    let e = err(&[("RUNSIGNAL__Webhooks__TimeoutSeconds", "0")]);
    assert!(e.contains("Webhooks.TimeoutSeconds"), "{e}");
    let e = err(&[("RUNSIGNAL__Webhooks__RetryScheduleSeconds", "[]")]);
    assert!(
        e.contains("Webhooks.RetryScheduleSeconds") && e.contains("1..=1000"),
        "{e}"
    );
    let e = err(&[
        ("RUNSIGNAL__Webhooks__RetryScheduleSeconds__0", "1"),
        ("RUNSIGNAL__Webhooks__RetryScheduleSeconds__1", "100000"),
    ]);
    assert!(e.contains("Webhooks.RetryScheduleSeconds[1]"), "{e}");
}

#[test]
fn env_list_items_replace_the_whole_list() {
    // The default schedule has five items; three given by index are the
    // whole schedule, not the first three of five.
    let c = Config::load_from(
        None,
        env(&[
            ("RUNSIGNAL__Webhooks__RetryScheduleSeconds__0", "1"),
            ("RUNSIGNAL__Webhooks__RetryScheduleSeconds__1", "1"),
            ("RUNSIGNAL__Webhooks__RetryScheduleSeconds__2", "2"),
        ]),
    )
    .unwrap();
    assert_eq!(c.webhooks.retry_schedule_seconds, vec![1, 1, 2]);
    // Over a file's list too, and the same with any key case.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(
        &path,
        r#"{"Auth": {"Jwt": {"Algorithms": ["RS256", "ES256", "HS256"]}}}"#,
    )
    .unwrap();
    let c = Config::load_from(
        Some(&path),
        env(&[("RUNSIGNAL__auth__JWT__algorithms__0", "EdDSA")]),
    )
    .unwrap();
    assert_eq!(c.auth.jwt.algorithms, vec!["EdDSA".to_string()]);
    // Items must start at 0: the list below is gone.
    let e = Config::load_from(
        None,
        env(&[("RUNSIGNAL__Webhooks__RetryScheduleSeconds__1", "5")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("Webhooks.RetryScheduleSeconds.1") && e.contains("next index is 0"),
        "{e}"
    );
}

#[test]
fn a_mistyped_log_level_stops_start_up() {
    let load = |level: &str| Config::load_from(None, env(&[("RUNSIGNAL__Logging__Level", level)]));
    for good in [
        "info",
        "WARN",
        "off",
        "info,runsignal=debug",
        "actix_web=warn",
    ] {
        assert!(load(good).is_ok(), "{good}");
    }
    for bad in ["inof", "", "loud", "runsignal=verbose", "info,debgu"] {
        let e = load(bad).unwrap_err().to_string();
        assert!(
            e.contains("Logging.Level") && e.contains("trace, debug, info, warn, error, off"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn auth_none_on_a_public_bind_is_refused_unless_anonymous_is_allowed() {
    let load = |extra: &[(&str, &str)]| {
        let mut vars = vec![("RUNSIGNAL__Server__Bind", "0.0.0.0:8080")];
        vars.extend_from_slice(extra);
        Config::load_from(None, env(&vars))
    };
    let err = load(&[]).unwrap_err().to_string();
    assert!(
        err.contains("Auth.Mode") && err.contains("Auth.AllowAnonymous"),
        "{err}"
    );
    assert!(load(&[("RUNSIGNAL__Auth__AllowAnonymous", "true")]).is_ok());
    let entry = r#"{"name":"ci","sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","tenants":["acme"],"scopes":["read"]}"#;
    let c = load(&[
        ("RUNSIGNAL__Auth__Mode", "token"),
        ("RUNSIGNAL__Auth__Tokens__0", entry),
    ])
    .unwrap();
    assert_eq!(c.auth.tokens[0].name, "ci");
    // Loopback binds need nothing.
    assert!(Config::load_from(None, env(&[("RUNSIGNAL__Server__Bind", "[::1]:8080")])).is_ok());
}

#[test]
fn auth_settings_are_validated_naming_the_key() {
    let load = |vars: &[(&str, &str)]| Config::load_from(None, env(vars)).unwrap_err().to_string();
    for (vars, key) in [
        (vec![("RUNSIGNAL__Auth__Mode", "basic")], "Auth.Mode"),
        (vec![("RUNSIGNAL__Auth__Mode", "token")], "Auth.Tokens"),
        (
            vec![
                ("RUNSIGNAL__Auth__Mode", "token"),
                (
                    "RUNSIGNAL__Auth__Tokens__0",
                    r#"{"name":"x","sha256":"abc","tenants":["a"],"scopes":["read"]}"#,
                ),
            ],
            "Auth.Tokens[0].sha256",
        ),
        (
            vec![
                ("RUNSIGNAL__Auth__Mode", "token"),
                (
                    "RUNSIGNAL__Auth__Tokens__0",
                    r#"{"name":"x","sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","tenants":["a"],"scopes":["root"]}"#,
                ),
            ],
            "Auth.Tokens[0].scopes",
        ),
        (vec![("RUNSIGNAL__Auth__Mode", "jwt")], "Auth.Jwt.Secret"),
        (
            vec![
                ("RUNSIGNAL__Auth__Mode", "jwt"),
                ("RUNSIGNAL__Auth__Jwt__Algorithms", r#"["RS256"]"#),
            ],
            "Auth.Jwt.PublicKeyFile",
        ),
        (
            vec![
                ("RUNSIGNAL__Auth__Mode", "jwt"),
                ("RUNSIGNAL__Auth__Jwt__Algorithms", r#"["none"]"#),
            ],
            "Auth.Jwt.Algorithms[0]",
        ),
        (
            vec![(
                "RUNSIGNAL__Server__Cors__AllowedOrigins__0",
                "https://app.example/path",
            )],
            "Server.Cors.AllowedOrigins[0]",
        ),
    ] {
        let err = load(&vars);
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
}

#[test]
fn the_redis_transport_needs_a_redis_url_and_postgresql() {
    let load = |pairs: &[(&str, &str)]| Config::load_from(None, env(pairs));
    let e = load(&[("RUNSIGNAL__messaging__transport", "redis")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("Redis.Url"), "{e}");
    let e = load(&[
        ("RUNSIGNAL__messaging__transport", "redis"),
        ("RUNSIGNAL__Redis__Url", "redis://127.0.0.1:6379"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("messaging.transport") && e.contains("postgres"),
        "{e}"
    );
    let c = load(&[
        ("RUNSIGNAL__messaging__transport", "redis"),
        ("RUNSIGNAL__Redis__Url", "redis://127.0.0.1:6379"),
        (
            "RUNSIGNAL__Database__Url",
            "postgres://postgres@127.0.0.1/test",
        ),
    ])
    .unwrap();
    assert_eq!(c.messaging.transport, "redis");
    let e = load(&[("RUNSIGNAL__messaging__transport", "nats")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("inmemory, redis"), "{e}");
}

#[test]
fn the_redis_cache_needs_a_redis_url() {
    let e = Config::load_from(
        None,
        env(&[("RUNSIGNAL__FirstSignal__Cache__Backend", "redis")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Redis.Url"), "{e}");
    let c = Config::load_from(
        None,
        env(&[
            ("RUNSIGNAL__FirstSignal__Cache__Backend", "redis"),
            ("RUNSIGNAL__Redis__Url", "redis://127.0.0.1:6379"),
        ]),
    )
    .unwrap();
    assert_eq!(c.first_signal.cache.backend, "redis");
}

#[test]
fn the_dashboard_is_on_by_default_and_its_switch_is_a_boolean() {
    assert!(Config::defaults().dashboard.enabled);
    let load = |v: &str| Config::load_from(None, env(&[("RUNSIGNAL__Dashboard__Enabled", v)]));
    assert!(!load("false").unwrap().dashboard.enabled);
    let e = load("nope").unwrap_err().to_string();
    assert!(e.contains("Dashboard.Enabled"), "{e}");
}

#[test]
fn actor_threads_default_to_one_per_cpu_and_are_bounded() {
    let load = |v: &str| Config::load_from(None, env(&[("RUNSIGNAL__Actors__Threads", v)]));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(Config::defaults().actors.threads(), cpus);
    assert_eq!(load("3").unwrap().actors.threads(), 3);
    for bad in ["257", "-1", "many"] {
        let e = load(bad).unwrap_err().to_string();
        assert!(e.contains("Actors.Threads"), "{bad}: {e}");
    }
    assert!(load("257").unwrap_err().to_string().contains("0..=256"));
}
