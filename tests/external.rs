//! External plugins from shared libraries: the listing and help of mktap and twistd, mktap
//! with an external plugin's options, and every library the host must refuse. Each test points
//! `TAPHOST_PLUGIN_PATH` at a plugin directory of its own.

#[path = "external/support.rs"]
mod support;
mod util;

use std::process::Command;

use support::*;
use util::{stderr, stdout, Sandbox, MKTAP, TWISTD};

#[test]
fn help_lists_external_plugins_marked_and_shows_their_options() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward", "counter"]);
    for bin in [MKTAP, TWISTD] {
        let out = Command::new(bin)
            .arg("--help")
            .env("TAPHOST_PLUGIN_PATH", &plugins)
            .env("HOME", sb.path())
            .output()
            .expect("run --help");
        let help = stdout(&out);
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with("portforward"))
            .unwrap_or_else(|| panic!("{bin} --help lists no portforward:\n{help}"));
        assert!(line.contains("[external]"), "{line}");
        let web = help
            .lines()
            .find(|l| l.trim_start().starts_with("web "))
            .expect("web is listed");
        assert!(!web.contains("[external]"), "{web}");
        // A resource is no subcommand; the help names it for `web --resource`.
        assert!(
            help.contains("External web resources (web --resource /PATH=NAME):\n  counter  Counts its hits (written in C) [external]"),
            "{help}"
        );
        assert_eq!(stderr(&out), "", "no library is refused");
    }
    let out = mktap_ok(&sb, &plugins, &["portforward", "--help"]);
    let help = stdout(&out);
    for option in [
        "--port <ENDPOINT>",
        "--host <TEXT>",
        "--dest_port <N>",
        "[default: localhost]",
    ] {
        assert!(help.contains(option), "no {option} in:\n{help}");
    }
    assert!(
        help.contains(&format!("{}", plugins.join("portforward.so").display())),
        "{help}"
    );

    // Without the plugin path, the plugin is unknown.
    let out = Command::new(MKTAP)
        .args(["portforward", "--help"])
        .env_remove("TAPHOST_PLUGIN_PATH")
        .env("HOME", sb.path())
        .output()
        .expect("run mktap");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("unknown plugin 'portforward' (known: web, mail, telnet; external plugins are looked for in $TAPHOST_PLUGIN_PATH"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mktap_writes_an_external_plugins_options_and_refuses_bad_ones() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(&sb, &["portforward"]);
    mktap_ok(
        &sb,
        &plugins,
        &[
            "portforward",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--dest_port",
            "8080",
        ],
    );
    let tap = json(&sb, "portforward.tap");
    let service = &tap["services"][0];
    assert_eq!(service["plugin"], "portforward");
    assert_eq!(service["listen"][0], "tcp:0:interface=127.0.0.1");
    assert_eq!(
        service["config"],
        serde_json::json!({ "host": "localhost", "dest_port": 8080 })
    );

    // The plugin's own validation, through the ABI.
    let out = mktap(
        &sb,
        &plugins,
        &["portforward", "--port", "0", "--dest_port", "0"],
    );
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--dest_port 0: must be between 1 and 65535"),
        "{}",
        stderr(&out)
    );
    for (args, problem) in [
        (
            ["--dest_port", "70000"],
            "--dest_port 70000: must be between 1 and 65535",
        ),
        (
            ["--host", "a b"],
            "--host 'a b': not a host name or IP address",
        ),
    ] {
        let mut all = vec!["portforward", "--port", "0"];
        all.extend(args);
        if args[0] != "--dest_port" {
            all.extend(["--dest_port", "80"]);
        }
        let out = mktap(&sb, &plugins, &all);
        assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
        assert!(stderr(&out).contains(problem), "{}", stderr(&out));
    }
    // clap's checks, from the descriptor's option data.
    let out = mktap(
        &sb,
        &plugins,
        &["portforward", "--port", "0", "--dest_port", "many"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("'many'"), "{}", stderr(&out));
    let out = mktap(&sb, &plugins, &["portforward", "--dest_port", "80"]);
    assert!(
        stderr(&out).contains("--port <ENDPOINT>"),
        "{}",
        stderr(&out)
    );

    // A tap with a config the plugin cannot decode is refused by twistd before anything runs.
    let refused = |text: &str| {
        sb.write("bad.tap", text);
        let out = Command::new(TWISTD)
            .args(["-n", "--pidfile", "", "-f", "bad.tap"])
            .current_dir(sb.path())
            .env("TAPHOST_PLUGIN_PATH", &plugins)
            .output()
            .expect("run twistd");
        assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
        stderr(&out)
    };
    let mut tap = tap;
    tap["services"][0]["config"]["colour"] = "blue".into();
    let err = refused(&serde_json::to_string(&tap).expect("encode"));
    assert!(err.contains("unknown field `colour`"), "{err}");
    // A value of the wrong type is named by its field, at its place in the file.
    tap["services"][0]["config"] =
        serde_json::json!({ "host": "localhost", "dest_port": "eighty" });
    let text = serde_json::to_string(&tap).expect("encode");
    let column = text.find("\"eighty\"").expect("in") + 1;
    let err = refused(&text);
    assert!(
        err.contains(&format!("bad.tap:1:{column}: "))
            && err.contains("config.dest_port: invalid type: string \"eighty\""),
        "{err}"
    );
}

#[test]
fn refused_libraries_are_named_and_never_called() {
    let sb = Sandbox::new();
    let plugins = plugin_dir(
        &sb,
        &[
            "wrong_abi",
            "no_entry",
            "bad_descriptor",
            "bad_default",
            "web_clash",
            "portforward",
        ],
    );
    std::fs::write(plugins.join("text.so"), "this is not a shared library\n").expect("write");
    let out = mktap(&sb, &plugins, &["--help"]);
    assert!(out.status.success());
    let err = stderr(&out);
    let named = |lib: &str| format!("plugin {} refused: ", plugins.join(lib).display());
    for (lib, why) in [
        (
            "wrong_abi.so",
            "it speaks plugin ABI version 999; this host speaks version 1",
        ),
        ("no_entry.so", "it exports no taphost_abi_version"),
        ("bad_descriptor.so", "its descriptor does not parse"),
        (
            "bad_default.so",
            "its option 'n' has a default its type cannot hold: \"abc\"",
        ),
        ("text.so", "cannot load it"),
        (
            "web_clash.so",
            "the name 'web' belongs to a built-in plugin",
        ),
    ] {
        assert!(
            err.contains(&format!("{}{why}", named(lib))),
            "{lib}: {err}"
        );
    }
    // The library of another ABI version had its entry function left alone.
    assert!(!sb.join("WRONG_ABI_ENTRY_CALLED").exists());
    // The good one and the built-in `web` still work.
    let help = stdout(&out);
    assert!(help.contains("portforward"), "{help}");
    let web = mktap_ok(&sb, &plugins, &["web", "--help"]);
    assert!(stdout(&web).contains("--path"));
    assert!(!stdout(&web).contains("impostor"));
}
