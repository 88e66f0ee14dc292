"""Analysis of run records: loading, model selection, tables, statistics, figures, reports."""
