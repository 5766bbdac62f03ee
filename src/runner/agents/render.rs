//! Readable, coloured terminal lines for structured agents' activity.
