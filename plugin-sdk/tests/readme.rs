//! The README's walkthrough is the compiled example `examples/no_localhost.rs`, shown verbatim.

#[test]
fn readme_shows_the_compiled_example() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/no_localhost.rs");
    assert!(
        readme.contains(&format!("```rust\n{example}```\n")),
        "plugin-sdk/README.md step 2 and examples/no_localhost.rs differ"
    );
}
