"""Deciding where a request runs, and running it there: the policy (a pure function), both tiers behind one
interface (``router.tier``), the activator that holds requests while the pod tier scales, and the scalers."""
