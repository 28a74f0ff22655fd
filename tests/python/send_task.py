"""Send one task the way the StaffProBot app does and print its result as JSON.

Usage: send_task.py TASK QUEUE [ARGS_JSON [KWARGS_JSON]]
"""
import json
import os
import sys

from celery import Celery

app = Celery("staffprobot", broker=os.environ["RABBITMQ_URL"], backend=os.environ["REDIS_URL"])
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"], timezone="Europe/Moscow")

task, queue = sys.argv[1], sys.argv[2]
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
kwargs = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
result = app.send_task(task, args=args, kwargs=kwargs, queue=queue)
print(json.dumps({"id": result.id, "result": result.get(timeout=60)}))
