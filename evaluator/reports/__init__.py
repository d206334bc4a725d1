"""What users read: score tables, the leaderboard, comparisons, charts, suite plans and outcomes."""
