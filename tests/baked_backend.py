"""A backend that bakes plans into a transformers model's weights instead of hooking them."""

from steerkit.runtimes.hf.backend import HFBackend
from steerkit.runtimes.hf.bake import bake


class BakedBackend(HFBackend):
    name = "hf-baked"

    def check(self, plan):
        plan.merged()  # weights cannot tell prompt from answer: refuses position-restricted edits

    def _steer(self, plan):  # called by apply(); what it returns is called by remove()
        self._baked = bake(self.model, plan)
        return lambda: self._baked.remove()  # bit-exact

    def nll(self, prompts, answers, first_token=False):  # scores are the unsteered model's: unbake meanwhile
        if self.applied is None:
            return super().nll(prompts, answers, first_token)
        self._baked.remove()
        try:
            return super().nll(prompts, answers, first_token)
        finally:
            self._baked = bake(self.model, self.applied)
