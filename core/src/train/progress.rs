//! Progress reporting from library code; the command-line tool draws the bars.

/// Receives progress of long operations. Implementations must tolerate calls from several
/// threads.
pub trait Progress: Sync {
    /// Starts a phase of `total` steps (images, episodes).
    fn begin(&self, label: &str, total: u64);
    /// Records `steps` more finished steps.
    fn advance(&self, steps: u64);
    /// Replaces the short status text shown beside the bar (for example the running loss).
    fn set_message(&self, message: &str);
    /// Ends the current phase.
    fn finish(&self);
}

/// Discards all progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _label: &str, _total: u64) {}
    fn advance(&self, _steps: u64) {}
    fn set_message(&self, _message: &str) {}
    fn finish(&self) {}
}
