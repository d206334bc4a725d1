"""What we keep on disk between runs: the response cache (answers, errors, scores) in shared SQLite files."""
