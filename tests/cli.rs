//! The command line contract: exit codes 0/1/2, --help/--version on every
//! subcommand, config errors that name file, line and key.
// librdkafka's mock cluster (the Kafka peer) is built for the host only;
// ARM binaries are tested through FERRY_TEST_BIN/FERRY_TEST_RUNNER.
#![cfg(target_arch = "x86_64")]

mod common;

use common::{ferry_command, run_cmd};

fn ferry(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = ferry_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd, None)
}

#[test]
fn help_and_version_everywhere() {
    for sub in [&[][..], &["run"], &["send"], &["status"], &["check-config"]] {
        let mut args = sub.to_vec();
        args.push("--help");
        let (code, out, _) = ferry(&args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage"), "{out}");
        let mut args = sub.to_vec();
        args.push("--version");
        let (code, out, _) = ferry(&args, &[]);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ferry(&["frobnicate"], &[]).0, 2);
    assert_eq!(ferry(&["send"], &[]).0, 2, "send needs -t");
    let (code, _, err) = ferry(&["send", "-t", "bad topic!", "v"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("invalid topic name"), "{err}");
    let (code, _, err) = ferry(&["send", "-t", "ok", "-H", "novalue", "v"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("NAME=VALUE"), "{err}");
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(
        &path,
        "node_id = \"gw1\"\n\n[kafka]\nlinger_ms = 5\nbatch_size = 10\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, _, err) = ferry(&["check-config", "-c", p], &[]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{p}, line 5")), "{err}");
    assert!(err.contains("kafka.batch_size"), "{err}");

    std::fs::write(&path, "[outbox]\ndurability = \"sometimes\"\n").unwrap();
    let (code, _, err) = ferry(&["run", "-c", p], &[]);
    assert_eq!(code, 2, "run refuses a broken config");
    assert!(
        err.contains("line 2") && err.contains("outbox.durability"),
        "{err}"
    );

    let (code, _, err) = ferry(&["check-config", "-c", "/nonexistent/ferry.toml"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/ferry.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn check_config_prints_effective_config_with_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, "[kafka]\nbrokers = [\"file:9092\"]\n").unwrap();
    let (code, out, err) = ferry(
        &["check-config", "-c", path.to_str().unwrap()],
        &[
            ("FERRY_BROKERS", "a:1,b:2"),
            ("FERRY_DATA_DIR", "/srv/ferry"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"a:1\"") && out.contains("\"b:2\""), "{out}");
    assert!(!out.contains("file:9092"), "{out}");
    assert!(out.contains("data_dir = \"/srv/ferry\""), "{out}");
}

#[test]
fn send_without_daemon_is_a_runtime_failure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = ferry(
        &["send", "-t", "t", "v"],
        &[("FERRY_DATA_DIR", data.to_str().unwrap())],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to ferry") && err.contains("ferry.sock"),
        "{err}"
    );
}

#[test]
fn second_daemon_on_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = common::Ferry::new(dir.path(), "127.0.0.1:1", "");
    f.start();
    let (code, _, err) = f.cli(&["run"], None);
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");
}

#[test]
fn under_journald_logs_carry_priority_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = common::Ferry::new(dir.path(), "127.0.0.1:1", "");
    f.env.push(("JOURNAL_STREAM".into(), "8:12345".into()));
    f.start();
    f.terminate();
    let log = f.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l.starts_with("<6>") || l.starts_with("<4>") || l.starts_with("<3>"),
            "journald line without a priority prefix: {l:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("ready")),
        "{log}"
    );
}

/// `ferry check-config | head -1`: a reader that goes away ends the
/// command quietly (as for other Unix tools), never with a panic.
#[test]
fn a_closed_stdout_pipe_ends_printing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = ferry_command();
    cmd.args(["check-config"])
        .env("FERRY_DATA_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Close the reading end before ferry writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.code() == Some(0) || out.status.signal() == Some(libc::SIGPIPE),
        "{:?} {err}",
        out.status
    );
}

/// `check-config --connect` reaches each broker and looks up the topics the
/// config names; what fails is named with what to check, and exits 1.
#[test]
fn check_config_connect_reports_each_broker_and_topic() {
    let c = common::cluster(1, &[("present", 2)]);
    let refused = format!("127.0.0.1:{}", common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[[route]]\npattern = \"in\"\nto = [\"present\", \"absent\"]\n\n[kafka]\nbrokers = [\"{}\", \"{refused}\"]\nconnect_timeout = \"2s\"\n",
            dir.path().display(),
            c.bootstrap_servers()
        ),
    )
    .unwrap();
    let path = cfg.to_str().unwrap();
    let (code, out, err) = ferry(&["check-config", "-c", path, "--connect"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let line = |start: &str| {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in:\n{out}"))
            .to_string()
    };
    assert!(
        line(&format!("# ok   broker {}", c.bootstrap_servers())).contains("connected (plaintext)")
    );
    assert!(line(&format!("# FAIL broker {refused}")).contains("refused"));
    assert!(line("# ok   topic present").contains("2 partitions"));
    assert!(line("# FAIL topic absent").contains("does not exist"));
    // The check created nothing.
    let (code, out, _) = ferry(&["check-config", "-c", path, "--connect"], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("# FAIL topic absent"), "{out}");
    // Everything reachable: exit 0.
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[kafka]\nbrokers = [\"{}\"]\ndead_letter_topic = \"present\"\n",
            dir.path().display(),
            c.bootstrap_servers()
        ),
    )
    .unwrap();
    let (code, out, err) = ferry(&["check-config", "-c", path, "--connect"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}
