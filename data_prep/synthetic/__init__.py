"""Synthetic O2O retailer: the raw source files (``01_raw``) and the truth behind them (``ground_truth``).

The world. Items have a category, a log-normal price and Zipf popularity within their category, and a few
*complement* items. Persons are online-only, offline-only or omni (some shift their channel mix on a day in
the window), with a latent propensity (mean 1), 1-3 preferred categories, an active window (late joiners,
lapsers) and identifiers. They shop in *missions* (``missions``): a store basket, or online sessions that
browse, cart and sometimes order (``online``); omni persons sometimes research online and buy in store the
next day (``stores``). Volume follows the weekday and hour of each channel, a mild season and promotion weeks;
each person's rate moves with their lifecycle (onboarding, habit, decline before a lapse), a replenishment
cycle, their response to promotions and the carts they abandon (``behaviour``).

Identity is messy the way it is in life (``persons``, ``identities``): most devices log in at some point,
a few never do; store kiosks are one device used by many persons; households type one phone at the till;
phone numbers get recycled; phones, emails and cards are typed in many formats. Records carry consent
choices (``crm``). Data-quality faults are injected at known rates (``faults``) and listed in
``ground_truth/faults.csv``; ``ground_truth/identifiers.csv`` names the person behind every raw identifier
value, ``behaviour.csv`` each person's latent behaviour and ``purchase_intensity.parquet`` their expected
purchases day by day (``truth``). Chunks of persons are simulated and appended one at a time (``retailer``,
``writer``).
"""
