//! The README's downstream example, as the test file of a crate outside this workspace.
//!
//! These tests take the example from the README text itself (the `rust` block after the
//! `<!-- outside-crate-example` marker), so the README and what is tested cannot drift:
//! they check that it is a complete test file under 15 lines that needs nothing but
//! `luca-core` and `luca-testkit`, and write the outside crate (a `Cargo.toml` with path
//! dependencies on this workspace, the example as `tests/contention.rs`, this workspace's
//! `Cargo.lock` so the same versions resolve offline).
//!
//! Building and running that crate takes a build of its own (its dependencies' features
//! are unified differently from this workspace's), too slow for a test: `.ci/outside-crate.sh`
//! sets `LUCA_OUTSIDE_CRATE_DIR`, runs this test binary to write the crate there, and then
//! runs `cargo test --offline` in it with this workspace's target directory. The README
//! block is also run as a doctest of luca-testkit (`rust,test_harness`).

use std::path::{Path, PathBuf};

use luca_testkit::TempDb;

const MARKER: &str = "<!-- outside-crate-example";

/// The code of the first ```` ```rust ```` block after the marker, and its fence line.
fn example(readme: &str) -> Result<(String, String), String> {
    let after = readme
        .find(MARKER)
        .map(|i| &readme[i..])
        .ok_or_else(|| format!("no `{MARKER}` marker in the README"))?;
    let mut lines = after.lines().skip_while(|l| !l.starts_with("```"));
    let fence = lines
        .next()
        .ok_or("no code block after the marker")?
        .trim()
        .to_owned();
    if !fence.starts_with("```rust") {
        return Err(format!("the block after the marker is `{fence}`, not rust"));
    }
    let mut code = String::new();
    for line in lines {
        if line.starts_with("```") {
            return Ok((code, fence));
        }
        code.push_str(line);
        code.push('\n');
    }
    Err("the code block after the marker is not closed".to_owned())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("luca-testkit is inside the workspace")
        .to_path_buf()
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// TOML basic string for a path.
fn toml_path(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes the outside crate into `dir`.
fn write_project(dir: &Path, workspace: &Path, test_file: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join("tests"))?;
    let manifest = format!(
        "[package]\n\
         name = \"downstream\"\n\
         version = \"0.1.0\"\n\
         edition = \"2024\"\n\
         publish = false\n\
         \n\
         [dev-dependencies]\n\
         luca-core = {{ path = {} }}\n\
         luca-testkit = {{ path = {} }}\n\
         \n\
         # Not a member of any workspace above it.\n\
         [workspace]\n",
        toml_path(&workspace.join("luca-core")),
        toml_path(&workspace.join("luca-testkit")),
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(
        dir.join("src/lib.rs"),
        "//! A downstream crate whose CI uses luca-testkit.\n",
    )?;
    std::fs::write(dir.join("tests/contention.rs"), test_file)?;
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock"))?;
    Ok(())
}

#[test]
fn the_readme_example_is_a_test_file_under_15_lines() {
    let (code, fence) = example(&readme()).unwrap();
    let lines = code.lines().count();
    assert!(lines < 15, "{lines} lines:\n{code}");
    assert!(
        code.lines()
            .all(|l| !l.starts_with('#') || l.starts_with("#[")),
        "no hidden doctest lines: the file is used as written\n{code}"
    );
    assert_eq!(
        fence, "```rust,test_harness",
        "run as a test harness in the doctests, so its #[test] runs there too"
    );
    assert!(code.contains("#[test]"), "{code}");
    assert!(code.contains("Contention::new("), "{code}");
    assert!(code.contains(".assert_clean()"), "{code}");
    // Nothing but the two crates (and std) is used.
    for line in code.lines().filter(|l| l.starts_with("use ")) {
        assert!(
            line.starts_with("use luca_testkit::")
                || line.starts_with("use luca_core::")
                || line.starts_with("use std::"),
            "{line}"
        );
    }
}

#[test]
fn the_outside_crate_is_written_with_the_exact_example() {
    let (code, _) = example(&readme()).unwrap();
    let ws = workspace();
    assert!(ws.join("Cargo.lock").is_file());
    assert!(ws.join("luca-core/Cargo.toml").is_file());
    let tmp = TempDb::new();
    let dir = tmp.dir().join("downstream");
    write_project(&dir, &ws, &code).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("tests/contention.rs")).unwrap(),
        code
    );
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!(
            "luca-testkit = {{ path = {} }}",
            toml_path(&ws.join("luca-testkit"))
        )),
        "{manifest}"
    );
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
    assert!(!dir.starts_with(&ws), "outside the workspace");

    // For .ci/outside-crate.sh, which builds and runs it.
    if let Some(out) = std::env::var_os("LUCA_OUTSIDE_CRATE_DIR") {
        let out = PathBuf::from(out);
        write_project(&out, &ws, &code).unwrap();
        println!("outside crate written to {}", out.display());
    }
}

#[test]
fn example_extraction_refuses_a_broken_readme() {
    let ok = format!("intro\n{MARKER} -->\n```rust,test_harness\nfn a() {{}}\n```\nmore\n");
    assert_eq!(
        example(&ok).unwrap(),
        ("fn a() {}\n".to_owned(), "```rust,test_harness".to_owned())
    );
    assert!(example("no marker here").unwrap_err().contains("no `"));
    let text = format!("{MARKER} -->\n```toml\n[x]\n```\n");
    assert!(example(&text).unwrap_err().contains("not rust"));
    let open = format!("{MARKER} -->\n```rust\nfn a() {{}}\n");
    assert!(example(&open).unwrap_err().contains("not closed"));
    assert!(example(MARKER).unwrap_err().contains("no code block"));
}

#[test]
fn toml_paths_are_quoted() {
    assert_eq!(toml_path(Path::new("/a b/c")), "\"/a b/c\"");
    assert_eq!(toml_path(Path::new("/a\"b")), "\"/a\\\"b\"");
}
