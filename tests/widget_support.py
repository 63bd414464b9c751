"""Shared by the widget tests: a fake scheduler for the debouncer."""


class FakeClock:
    """A scheduler for the widgets' debouncer whose time only moves on :meth:`advance`."""

    class Job:
        def __init__(self, due, fn):
            self.due, self.fn, self.cancelled = due, fn, False

        def cancel(self):
            self.cancelled = True

    def __init__(self):
        self.now = 0.0
        self.jobs = []

    def schedule(self, delay, fn):
        job = self.Job(self.now + delay, fn)
        self.jobs.append(job)
        return job

    def advance(self, seconds):
        self.now += seconds
        due = [j for j in self.jobs if not j.cancelled and j.due <= self.now]
        self.jobs = [j for j in self.jobs if not j.cancelled and j.due > self.now]
        for job in due:
            job.fn()
