"""Teacher-derived students (Flash-VAED): the teacher's decoder graph, pruned and partly replaced.

``DerivedStudent`` (student.py) is the model; ``derive`` (pruning.py) builds one from a teacher; the
per-family graphs live in taef2.py, wan.py and ltx.py; the conv operators in operators.py.
"""
from .pruning import COMPENSATIONS, SELECTIONS, Derivation, derive, student_kwargs, teacher_graph_student
from .student import FAMILIES, DerivedStudent

__all__ = ["COMPENSATIONS", "FAMILIES", "SELECTIONS", "Derivation", "DerivedStudent", "derive", "student_kwargs",
           "teacher_graph_student"]
