"""A backend that bakes plans into a transformers model's weights instead of hooking them."""

from steerkit.runtimes.base import Backend, Handle
from steerkit.runtimes.hf.backend import HFBackend
from steerkit.runtimes.hf.bake import bake


class BakedBackend(HFBackend):
    name = "hf-baked"

    def check(self, plan):
        plan.merged()  # weights cannot tell prompt from answer: refuses position-restricted edits

    def apply(self, plan):
        handle = Backend.apply(self, plan)  # checks and remembers the plan
        self._baked = bake(self.model, plan)

        def remove():
            self._baked.remove()  # bit-exact
            handle.remove()

        return Handle(remove)

    def nll(self, prompts, answers):  # scores are the unsteered model's: unbake meanwhile
        if self.applied is None:
            return super().nll(prompts, answers)
        self._baked.remove()
        try:
            return super().nll(prompts, answers)
        finally:
            self._baked = bake(self.model, self.applied)
