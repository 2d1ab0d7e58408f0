from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Exercise:
    check: Callable            # check_<name>(fn) from transformer_course.checks.<topic>
    solution: Callable         # what the solution notebook exports to the package
    # (wrong answer, fragment the check's message must contain): at least two per exercise
    wrong: list = field(default_factory=list)
