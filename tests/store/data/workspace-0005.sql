BEGIN TRANSACTION;
CREATE TABLE compute_targets (
                name VARCHAR(64) PRIMARY KEY, type VARCHAR(16) NOT NULL, max_concurrent_jobs INTEGER NOT NULL,
                min_nodes INTEGER NOT NULL, max_nodes INTEGER NOT NULL, idle_time_before_scale_down INTEGER NOT NULL,
                description TEXT, created_at VARCHAR(40) NOT NULL, address TEXT, size VARCHAR(128), storage TEXT);
INSERT INTO "compute_targets" VALUES('local','local',1,0,1,120,'The machine running the forgeflow server.','2026-11-30T19:05:25+00:00',NULL,NULL,NULL);
INSERT INTO "compute_targets" VALUES('legacy-ray','ray',2,0,1,120,NULL,'2026-11-30T19:05:25+00:00','127.0.0.1:6379',NULL,'/srv/forgeflow-shared');
CREATE TABLE connections (
                name VARCHAR(128) PRIMARY KEY, type VARCHAR(32) NOT NULL, configs TEXT NOT NULL,
                secrets TEXT NOT NULL, created_at VARCHAR(40) NOT NULL, updated_at VARCHAR(40) NOT NULL);
INSERT INTO "connections" VALUES('legacy-conn','custom','{"endpoint": "http://127.0.0.1:9/score"}','gAAAAABrDcj1rwHql9FGBbM8E5GxlPkRXsgH99hbycNqlg8xcYwdmuTFBufY65VnzoyusiFov4_Z3xoZFARXQC9gAL3jS7MUIB2BlSJqKbT56sSAXSKCg-4=','2026-11-30T19:05:25+00:00','2026-11-30T19:05:25+00:00');
CREATE TABLE deployments (
                endpoint VARCHAR(32) NOT NULL, name VARCHAR(32) NOT NULL,
                model_ref VARCHAR(256) NOT NULL, model_path TEXT NOT NULL, runtime VARCHAR(32) NOT NULL,
                instance_count INTEGER NOT NULL, request_settings TEXT NOT NULL,
                state VARCHAR(32) NOT NULL, error TEXT, created_at VARCHAR(40) NOT NULL, liveness_probe TEXT, readiness_probe TEXT, updated_at VARCHAR(40), compute VARCHAR(64), resources TEXT, scale_settings TEXT,
                PRIMARY KEY (endpoint, name));
INSERT INTO "deployments" VALUES('legacy-ep','blue','legacy-model:1','/models/legacy-model','transformers',1,'{"request_timeout_ms": 90000}','Succeeded',NULL,'2026-11-30T19:05:25+00:00',NULL,NULL,'2026-11-30T19:05:25+00:00','local','{"cpus": 1}','{"type": "default"}');
CREATE TABLE endpoints (
                name VARCHAR(32) PRIMARY KEY, auth_mode VARCHAR(16) NOT NULL,
                primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
                traffic TEXT NOT NULL, description TEXT, created_at VARCHAR(40) NOT NULL, mirror_traffic TEXT, max_body_bytes INTEGER);
INSERT INTO "endpoints" VALUES('legacy-ep','key','gAAAAABrDcj1t0FUrslj_GEUAtLrQGcpeE8sEF4Ok5lZc3W37GhsQri5MdFgwrZshGIq69zgX0RWu6d_kiCg1YCe8X02HRui3bVN4_j2SfSsxSytHoqvM6s=','gAAAAABrDcj1C1hfF_3y567MRQA93S1dFQ_2Asyqk9sIlPXXsjvDZA8EESmdobPrdBsSIFrINHzK72Fx1fDtCBfTZPaT4oJEnk0pv7YJv_zGTRALsJ_gZV0=','{"blue": 100}','made before Alembic','2026-11-30T19:05:25+00:00','{}',65536);
CREATE TABLE jobs (
                id VARCHAR(64) PRIMARY KEY, name VARCHAR(128) NOT NULL, type VARCHAR(32) NOT NULL,
                status VARCHAR(32) NOT NULL, compute VARCHAR(64) NOT NULL,
                base_model VARCHAR(256) NOT NULL, base_model_path TEXT NOT NULL,
                training_data TEXT NOT NULL, validation_data TEXT,
                hyperparameters TEXT NOT NULL, job_dir TEXT NOT NULL,
                pid INTEGER, error TEXT, mlflow_run_id VARCHAR(64), progress TEXT, metrics TEXT,
                created_at VARCHAR(40) NOT NULL, started_at VARCHAR(40), finished_at VARCHAR(40));
INSERT INTO "jobs" VALUES('ftjob-legacy0001','legacy-job','finetuning','Completed','local','smollm2-135m-instruct','/models/smollm2','/data/train.jsonl',NULL,'{"learning_rate": 0.0002, "lora_r": 8, "max_steps": 3}','/jobs/ftjob-legacy0001',NULL,NULL,'0123456789abcdef','{"step": 3, "max_steps": 3}','{"train_loss": 1.25}','2026-11-30T19:05:25+00:00','2026-11-30T19:05:25+00:00','2026-11-30T19:05:25+00:00');
CREATE TABLE schema_migrations (name VARCHAR(128) PRIMARY KEY, applied_at VARCHAR(40));
INSERT INTO "schema_migrations" VALUES('0001_initial','2026-11-30T19:05:25+00:00');
INSERT INTO "schema_migrations" VALUES('0002_compute_targets','2026-11-30T19:05:25+00:00');
INSERT INTO "schema_migrations" VALUES('0003_endpoint_features','2026-11-30T19:05:25+00:00');
INSERT INTO "schema_migrations" VALUES('0004_studio_sessions','2026-11-30T19:05:25+00:00');
INSERT INTO "schema_migrations" VALUES('0005_clusters','2026-11-30T19:05:25+00:00');
CREATE TABLE settings (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "settings" VALUES('admin_token','gAAAAABrDcj12aJ1mGM2Y25rezKwEF171HK6H_hEYWP4jCIrmAnXAW71gZXwtznBU4xmMcUAFPQa5vxHX-Tt8u3dYtU5HW2xHCgGSDaRwvjmGAxVOHeiQiUX12dkbKkwQXW2RbM_TxME');
INSERT INTO "settings" VALUES('upgrade_probe','kept');
CREATE TABLE studio_sessions (
                id_hash VARCHAR(64) PRIMARY KEY, token_tag VARCHAR(64) NOT NULL, created_at VARCHAR(40) NOT NULL,
                expires_at INTEGER NOT NULL);
INSERT INTO "studio_sessions" VALUES('445beb3ba11a5ebabe1fa0bac755a9c6016e7c5dcec6a8f3af2eab404c5b037b','48bccdaff092e03194c9aada1e9e0022c6d73cecef1cf688681b05d0d8f47e91','2026-11-30T19:05:25+00:00',1796670325);
COMMIT;
