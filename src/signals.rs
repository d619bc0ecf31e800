//! Signals (SPEC §10), handled on their own thread with signal-hook so that nothing runs
//! inside a signal handler: SIGTERM/SIGINT begin a graceful stop (a second one exits at
//! once), SIGHUP reloads the configuration, SIGUSR1 reopens the error and access logs.

use std::io;
use std::net::{Shutdown, TcpListener};
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use socket2::SockRef;

use crate::proxy::Proxy;

/// Starts the signal thread. `listener` is a handle on the listening socket: shutting
/// it down wakes the acceptor's blocking `accept`, which then returns.
pub fn spawn(proxy: Arc<Proxy>, listener: TcpListener) -> io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    thread::Builder::new()
        .name("signals".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for signal in signals.forever() {
                handle(signal, &proxy, &listener);
            }
        })?;
    Ok(())
}

fn handle(signal: i32, proxy: &Proxy, listener: &TcpListener) {
    match signal {
        SIGTERM | SIGINT => {
            if proxy.begin_stop() {
                log::info!(
                    "signal {signal}: stopping (in-flight requests get {:?})",
                    proxy.settings().cfg.shutdown_grace
                );
                let _ = SockRef::from(listener).shutdown(Shutdown::Read);
            } else {
                log::warn!("signal {signal} again: exiting now");
                std::process::exit(1);
            }
        }
        SIGUSR1 => {
            report_reopen(proxy.errlog.path(), proxy.errlog.reopen());
            if let Some(access) = &proxy.access_log {
                report_reopen(access.path(), access.reopen());
            }
        }
        SIGHUP => match proxy.reload() {
            Ok(notes) => {
                for note in notes {
                    log::warn!("SIGHUP: {note}");
                }
                log::info!("SIGHUP: configuration reloaded");
            }
            Err(e) => log::error!("SIGHUP: reload failed, keeping the running configuration: {e}"),
        },
        _ => {}
    }
}

fn report_reopen(path: &std::path::Path, result: io::Result<()>) {
    match result {
        Ok(()) => log::info!("SIGUSR1: reopened {}", path.display()),
        Err(e) => log::error!("SIGUSR1: cannot reopen {}: {e}", path.display()),
    }
}
