"""Evaluation harness: task readers (GLUE TSV, SICK), metrics, the runner and the results table.

    from npbert.eval import evaluate, render_table
    r = evaluate("../shared/models/minilm-l6-glue/MRPC", "mrpc", "../shared/data/glue/MRPC")
    print(render_table([r]))
"""

from npbert.eval.metrics import METRICS, accuracy, f1, mcc, pearson, spearman
from npbert.eval.runner import evaluate
from npbert.eval.table import render_table
from npbert.eval.tasks import TASKS, Examples, Task, load_split

__all__ = [
    "TASKS", "Task", "Examples", "load_split", "evaluate", "render_table",
    "METRICS", "accuracy", "f1", "mcc", "pearson", "spearman",
]
