//! Every file under tests/invalid/ is refused with exactly the errors in its `.expected` file,
//! each line of which is `LINE:COL: KEY.PATH: message (...)` without the file name.

use std::path::{Path, PathBuf};

use rampart_config::Config;

fn invalid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid")
}

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(invalid_dir())
        .expect("tests/invalid exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// (line, key path) of each expected error line.
fn expected(path: &Path) -> Vec<(usize, String, String)> {
    let text = std::fs::read_to_string(path.with_extension("expected"))
        .unwrap_or_else(|e| panic!("{}: no .expected file: {e}", path.display()));
    text.lines()
        .map(|line| {
            let (line_number, rest) = line.split_once(':').expect("LINE:COL: ...");
            let (_column, rest) = rest.split_once(": ").expect("LINE:COL: ...");
            let key_path = rest.split(": ").next().unwrap_or_default().to_owned();
            (
                line_number.parse().expect("a line number"),
                key_path,
                line.to_owned(),
            )
        })
        .collect()
}

#[test]
fn there_are_invalid_examples() {
    assert!(examples().len() >= 5, "expected several invalid examples");
}

#[test]
fn every_invalid_example_reports_its_key_paths_and_lines() {
    for file in examples() {
        let errors = Config::from_file(&file).expect_err("an invalid example must be refused");
        let origin = file.display().to_string();
        let expected = expected(&file);
        assert_eq!(
            errors.len(),
            expected.len(),
            "{origin}: wrong number of errors:\n{errors}"
        );
        for (error, (line, key_path, _)) in errors.iter().zip(&expected) {
            assert_eq!(error.origin(), origin);
            assert_eq!(error.line(), Some(*line), "{origin}: {error}");
            if !key_path.starts_with("invalid TOML") {
                assert_eq!(error.path(), key_path, "{origin}: {error}");
            }
        }
    }
}

#[test]
fn every_invalid_example_displays_exactly_as_expected() {
    for file in examples() {
        let errors = Config::from_file(&file).expect_err("an invalid example must be refused");
        let origin = file.display().to_string();
        let shown: Vec<String> = errors
            .to_string()
            .lines()
            .map(|line| {
                line.strip_prefix(&format!("{origin}:"))
                    .unwrap_or_else(|| panic!("{line:?} does not start with the file name"))
                    .to_owned()
            })
            .collect();
        let wanted: Vec<String> = expected(&file).into_iter().map(|(_, _, l)| l).collect();
        assert_eq!(shown, wanted, "{origin}");
    }
}

#[test]
fn the_annotated_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rampart.toml");
    let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes.len(), 3);
    assert_eq!(config.routes[2].name, "route-2");
    assert!(config.routes.iter().all(|r| r.listener == "main"));
    assert!(config.outbox.is_some());
}

#[test]
fn a_missing_file_is_one_error_naming_it() {
    let errors = Config::from_file("/nonexistent/rampart.toml").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors
            .to_string()
            .starts_with("/nonexistent/rampart.toml: cannot read")
    );
    // A relative name says where it was looked for.
    let errors = Config::from_file("nonexistent-rampart.toml").unwrap_err();
    let here = std::env::current_dir().unwrap();
    assert!(
        errors
            .to_string()
            .ends_with(&format!("no such file in {}", here.display())),
        "{errors}"
    );
}

#[test]
fn a_fallback_body_file_is_resolved_against_the_config_directory() {
    let dir = std::env::temp_dir().join(format!("rampart-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rampart.toml");
    let text = "[[routes]]\nupstream = \"u\"\nfallback = { body_file = \"fb.json\" }\n\
                [upstreams.u]\nendpoints = [\"127.0.0.1:1\"]\n";
    std::fs::write(&config, text).unwrap();
    let errors = Config::from_file(&config).unwrap_err();
    assert_eq!(
        errors.iter().next().unwrap().path(),
        "routes[0].fallback.body_file"
    );
    assert!(errors.to_string().contains("no such file"), "{errors}");
    std::fs::write(dir.join("fb.json"), "{}").unwrap();
    let loaded = Config::from_file(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.routes[0].fallback.as_ref().unwrap().body,
        rampart_config::FallbackBody::File {
            path: dir.join("fb.json"),
            content: Some(b"{}".to_vec()),
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_empty_too_large_or_not_text_is_refused_saying_so() {
    let dir = std::env::temp_dir().join(format!("rampart-config-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rampart.toml");
    let refused = |contents: &[u8]| {
        std::fs::write(&file, contents).unwrap();
        Config::from_file(&file).unwrap_err().to_string()
    };
    // A write cut short, or a file emptied by mistake, is no configuration of no routes.
    assert!(refused(b"").ends_with("the configuration file is empty"));
    assert!(refused(b" \n\t\n").ends_with("the configuration file is empty"));
    let said = refused(b"[admin]\nlisten = \"\xff\"\n");
    assert!(said.contains("not UTF-8 text"), "{said}");
    assert!(said.contains("line 2, column 11"), "{said}");
    let large = vec![b'#'; (16 << 20) + 1];
    assert!(refused(&large).ends_with("larger than 16 MiB"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_body_file_the_proxy_could_not_read_whole_is_refused_by_the_check() {
    let dir = std::env::temp_dir().join(format!("rampart-config-bodies-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("a-directory")).unwrap();
    let config = dir.join("rampart.toml");
    let error = |body_file: &str| {
        let text = format!(
            "[[routes]]\nupstream = \"u\"\nfallback = {{ body_file = \"{body_file}\" }}\n\
             [upstreams.u]\nendpoints = [\"127.0.0.1:1\"]\n"
        );
        std::fs::write(&config, text).unwrap();
        let errors = Config::from_file(&config).unwrap_err();
        let first = errors.iter().next().unwrap();
        assert_eq!(first.path(), "routes[0].fallback.body_file");
        errors.to_string()
    };
    assert!(error("a-directory").contains("is a directory"));
    let fifo = dir.join("a-fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    assert!(error("a-fifo").contains("is not a regular file"));
    std::fs::write(dir.join("large.json"), vec![b' '; (1 << 20) + 1]).unwrap();
    assert!(error("large.json").contains("is 1048577 bytes; a fallback body is at most 1 MiB"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_outbox_path_that_cannot_be_a_directory_is_refused() {
    let dir = std::env::temp_dir().join(format!("rampart-config-outbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rampart.toml");
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, "").unwrap();
    for (path, message) in [
        ("", "an empty path"),
        (a_file.to_str().unwrap(), "is not a directory"),
    ] {
        std::fs::write(&config, format!("[outbox]\npath = \"{path}\"\n")).unwrap();
        let errors = Config::from_file(&config).unwrap_err();
        assert_eq!(errors.iter().next().unwrap().path(), "outbox.path");
        assert!(errors.to_string().contains(message), "{errors}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
