"""`loadbench ab`'s run stage: two sides (an interpreter plus environment variables), each with its own warm
template in a side process of its own, measured round by round, interleaved (DESIGN section 10).

side.py runs inside a side's interpreter and serves cells; sides.py is the parent's handle on one;
schedule.py orders each round; session.py plans, drives the rounds and writes the one run directory.
"""
