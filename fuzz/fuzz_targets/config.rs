//! The config loader: TOML plus `FERRY_*` variables. No input may panic,
//! and a rejection always names the file and says what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The first line (if it starts with '#env ') holds NAME=VALUE pairs.
    let text = String::from_utf8_lossy(data);
    let (env, toml) = match text.strip_prefix("#env ") {
        Some(rest) => match rest.split_once('\n') {
            Some((vars, toml)) => (vars.to_string(), toml.to_string()),
            None => (rest.to_string(), String::new()),
        },
        None => (String::new(), text.to_string()),
    };
    let env: Vec<(String, String)> = env
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (format!("FERRY_{k}"), v.to_string()))
        .collect();
    let file = Path::new("/fuzz/ferry.toml");
    match ferry::config::Config::from_toml(&toml, Some(file), &env) {
        Ok(config) => {
            // What check-config prints parses back.
            let again = config.to_toml();
            ferry::config::Config::from_toml(&again, Some(file), &[])
                .expect("the effective config loads again");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.contains("/fuzz/ferry.toml"), "{shown}");
            assert!(!e.message.is_empty());
        }
    }
});
