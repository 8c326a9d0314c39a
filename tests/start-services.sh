#!/usr/bin/env bash
# Starts the local services the tests talk to when they are not already up.
set -u
up() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
if ! up 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi
if ! up 6379; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! up 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
fi
for port in 5432 6379; do
  for _ in $(seq 60); do up $port && break; sleep 0.5; done
  up $port || { echo "service on port $port did not start" >&2; exit 1; }
done
