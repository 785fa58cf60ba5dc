//! The README's scenario table is generated from the registry
//! (`cargo run -p hil -- list --markdown`): a scenario cannot be missing from
//! it, nor a negative control.

#[test]
fn readme_scenario_table_is_the_registry() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md at the workspace root");
    let (begin, end) = ("<!-- scenarios:begin -->\n", "<!-- scenarios:end -->");
    let start = readme
        .find(begin)
        .expect("README has the scenarios:begin marker")
        + begin.len();
    let stop = readme[start..]
        .find(end)
        .expect("README has the scenarios:end marker")
        + start;
    assert_eq!(
        &readme[start..stop],
        hil::scenarios::markdown_table(),
        "the README's scenario table differs from the registry: paste `cargo run -p hil -- list --markdown` between the markers"
    );
}
