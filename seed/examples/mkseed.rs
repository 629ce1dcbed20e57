//! Builds a seed image from files, without the `berth` binary: `mkseed OUT.iso FORMAT USERDATA METADATA [MAC]`.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: mkseed OUT.iso config-2|nocloud USERDATA METADATA [MAC]");
        std::process::exit(2);
    }
    let sources = seed::Sources {
        userdata: a[3].clone().into(),
        metadata: a[4].clone().into(),
    };
    let options = seed::Options {
        format: a[2].parse().unwrap_or_else(|e| panic!("{e}")),
        hostname: "vm-0".into(),
        mac: a
            .get(5)
            .map(|m| m.parse().unwrap_or_else(|e| panic!("{e}"))),
    };
    match seed::build_drive(&sources, &options, std::path::Path::new(&a[1])) {
        Ok(out) => println!("{out:?}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}
