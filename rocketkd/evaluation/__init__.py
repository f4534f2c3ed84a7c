"""Evaluation: metrics (trec_eval's definitions), compare (paired tests), report (results.json/.md) and plots; pure
measurement, importing no model, index or search code."""
