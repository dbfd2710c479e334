//! Checks a file: `cargo run -p rampart-config --example check -- FILE`.
fn main() {
    let path = std::env::args().nth(1).expect("a file");
    match rampart_config::Config::from_file(&path) {
        Ok(c) => print!("{}", c.summary()),
        Err(e) => println!("{e}"),
    }
}
