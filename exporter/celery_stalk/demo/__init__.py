"""celery-stalk demo: a shop's Celery workload, a local broker and the exporter, in one command.

tasks.py is the sample app (also run by the docker-compose stack), traffic.py
its producer, broker.py the local broker, summary.py the live terminal view and
run.py what starts and stops them all.
"""
