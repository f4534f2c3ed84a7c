"""Candidate lists for a lone ``rocketkd train``: from ``candidates.path``, mined, or sampled from the qrels."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from rocketkd.candidates.mining import mine
from rocketkd.candidates.negatives import label_lists
from rocketkd.config import Config
from rocketkd.data.formats import read_candidates
from rocketkd.distributed import barrier
from rocketkd.errors import ConfigError
from rocketkd.types import CandidateList

logger = logging.getLogger(__name__)


def build_lists(cfg: Config, data, output_dir: str | Path | None = None) -> list[CandidateList]:
    """Candidate lists from ``candidates.path`` (mined), else per ``candidates.source``.

    ``sampled``: qrels positives + random corpus negatives (easy negatives, no model needed). ``mined``: the top
    ``mining.depth`` of ``mining.first_round`` (BM25 or the base encoder) as ``rocketkd mine`` builds them, written
    to ``<output_dir>/candidates.jsonl`` (reused when a run resumes).
    """
    queries = data.all_queries()
    if cfg.candidates.path:
        return read_candidates(cfg.candidates.path, corpus=data.corpus, queries=queries)
    split = cfg.data.train_split
    if split not in data.qrels:
        raise ConfigError(
            f"config key 'data.train_split': no qrels split {split!r} (loaded: {', '.join(data.qrels) or 'none'})"
        )
    if cfg.candidates.source == "mined":
        path = Path(output_dir or cfg.output_dir) / "candidates.jsonl"
        if not path.exists():
            mcfg = cfg
            if cfg.candidates.mined_by and cfg.candidates.mined_by != cfg.mining.first_round:
                mcfg = copy.deepcopy(cfg)
                mcfg.mining.first_round = cfg.candidates.mined_by
            logger.info("building candidate lists: top %d of %s per training query", cfg.mining.depth,
                        mcfg.mining.first_round)
            mine(mcfg, output=path, data=data)
        barrier()
        return read_candidates(path, corpus=data.corpus, queries=queries)
    qrels = data.qrels[split]
    return label_lists(
        qrels,
        data.corpus.ids,
        list_length=cfg.candidates.list_length,
        seed=cfg.candidates.seed,
        min_grade=cfg.data.min_positive_grade,
    )
