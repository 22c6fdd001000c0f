//! ferrovm's log (tracing): on stderr at the level `FERROVM_LOG` sets (default `warn`),
//! and reconfigurable once while the VM is being configured (`PUT /logger`: a file or
//! named pipe, a level, whether to show the level and the source location, one module).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use api::models::{self, LogLevel};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// What `PUT /logger` talks to.
pub trait LoggerControl: Send + Sync {
    /// Applies a `PUT /logger` body.
    fn configure(&self, l: &models::Logger) -> Result<(), String>;
    /// What was configured, for `GET /vm/config`.
    fn current(&self) -> Option<models::Logger>;
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The process's logger.
pub struct Logger {
    handle: reload::Handle<BoxedLayer, Registry>,
    current: Mutex<Option<models::Logger>>,
}

/// The environment variable with the default filter (tracing env-filter syntax).
pub const LOG_ENV: &str = "FERROVM_LOG";

fn stderr_layer() -> BoxedLayer {
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new("warn"));
    fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter)
        .boxed()
}

/// Installs the process's logger (once; later calls return a logger that cannot be
/// reconfigured, as the first one stays installed).
pub fn init() -> Arc<Logger> {
    let (layer, handle) = reload::Layer::new(stderr_layer());
    if let Err(e) = tracing_subscriber::registry().with(layer).try_init() {
        eprintln!("ferrovm: cannot install the logger: {e}");
    }
    Arc::new(Logger {
        handle,
        current: Mutex::new(None),
    })
}

fn level_name(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Error => "error",
        LogLevel::Warning => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
        LogLevel::Off => "off",
    }
}

/// The filter a `PUT /logger` body asks for (Firecracker's default level is Info).
pub fn filter_spec(l: &models::Logger) -> Result<String, String> {
    let level = level_name(l.level.unwrap_or_default());
    match &l.module {
        None => Ok(level.to_string()),
        Some(m) => {
            if m.is_empty()
                || !m
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            {
                return Err(format!("invalid module path {m:?}"));
            }
            Ok(format!("off,{m}={level}"))
        }
    }
}

impl LoggerControl for Logger {
    fn configure(&self, l: &models::Logger) -> Result<(), String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_some() {
            return Err("Reinitialization of logger not allowed.".into());
        }
        let filter = EnvFilter::try_new(filter_spec(l)?).map_err(|e| e.to_string())?;
        let origin = l.show_log_origin.unwrap_or(false);
        let base = fmt::layer()
            .with_level(l.show_level.unwrap_or(false))
            .with_file(origin)
            .with_line_number(origin)
            .with_target(origin);
        let layer: BoxedLayer = match &l.log_path {
            Some(path) => {
                let file: File = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path)
                    .map_err(|e| format!("cannot open {path}: {e}"))?;
                base.with_ansi(false)
                    .with_writer(Mutex::new(file))
                    .with_filter(filter)
                    .boxed()
            }
            None => base
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
        };
        self.handle
            .reload(layer)
            .map_err(|e| format!("cannot reconfigure the logger: {e}"))?;
        *current = Some(l.clone());
        tracing::info!("logger configured: {l:?}");
        Ok(())
    }

    fn current(&self) -> Option<models::Logger> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_from_levels_and_modules() {
        let l = |level, module: Option<&str>| models::Logger {
            level,
            module: module.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(filter_spec(&l(None, None)).unwrap(), "info");
        assert_eq!(
            filter_spec(&l(Some(LogLevel::Warning), None)).unwrap(),
            "warn"
        );
        assert_eq!(
            filter_spec(&l(Some(LogLevel::Debug), Some("vmm::vcpu"))).unwrap(),
            "off,vmm::vcpu=debug"
        );
        assert!(filter_spec(&l(None, Some("a b"))).is_err());
    }
}
