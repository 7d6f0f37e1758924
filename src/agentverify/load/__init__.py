"""Load rehearsals: Locust in a child process, typed results, SLO and cost gates.

Locust gevent-patches the process that imports it (locust#2250), so it is imported in
exactly one place, :mod:`agentverify.load.child`, which always runs as a process of its
own; everything else here (the driver, the plan, the stats, the steps) is plain Python.

==============  ===========================================================================
``plan``        :class:`~agentverify.load.plan.LoadPlan` (what to run), prompt choice,
                counters of what the answers said
``driver``      :class:`~agentverify.load.driver.LoadDriver`: starts the child in its own
                process group, reads its JSON lines, aborts early, always cleans up
``child``       ``python -m agentverify.load.child``: Locust's Environment and runners
                (local, or master + N workers) as a library
``users``       the Locust user of the agent (child only)
``shapes``      constant / ramp / step load shapes
``stats``       :class:`~agentverify.load.stats.Snapshot`,
                :class:`~agentverify.load.stats.LoadResult`, SLO evaluation and abort
``steps``       the scenario steps ``load``, ``cache_cost``, ``max_tokens``, ``rate_limit``
==============  ===========================================================================
"""
