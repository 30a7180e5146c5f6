//! `bop-fuzz TARGET`: one of bop's network-decoder fuzz targets (`bop_raft::fuzzing`), run by AFL++ in
//! persistent mode; `bop-fuzz --seeds DIR` writes every target's seed inputs to `DIR/TARGET/`. `fuzz/run`
//! builds and drives it.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let targets = bop_raft::fuzzing::targets();
    match args.get(1).map(String::as_str) {
        Some("--seeds") => {
            let dir = std::path::Path::new(args.get(2).expect("--seeds DIR"));
            for (name, _, seeds) in &targets {
                let into = dir.join(name);
                std::fs::create_dir_all(&into).expect("seed directory");
                for (i, seed) in seeds.iter().enumerate() {
                    std::fs::write(into.join(format!("seed-{i}")), seed).expect("write seed");
                }
            }
        }
        Some(name) => {
            let Some((_, run, _)) = targets.into_iter().find(|(n, _, _)| *n == name) else {
                eprintln!("bop-fuzz: no target {name:?}");
                std::process::exit(2);
            };
            afl::fuzz!(|data: &[u8]| run(data));
        }
        None => {
            let names: Vec<&str> = targets.iter().map(|(n, _, _)| *n).collect();
            eprintln!("usage: bop-fuzz TARGET | --seeds DIR (targets: {})", names.join(", "));
            std::process::exit(2);
        }
    }
}
