//! `stickylb`: the agent and its control commands (the agent lands with issue 3).

fn main() {
    eprintln!("stickylb: the agent is not implemented yet");
    std::process::exit(1);
}
