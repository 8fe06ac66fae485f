-- Times each deployment target was notified over the deployment's whole life: the attempt
-- number the device sees. `attempts` counts against the deployment's max_attempts and starts
-- again when an operator resumes with retries; this never goes down, so a device that handles
-- each (deployment, attempt) once sees a retry as a new attempt even with the same artifact.
ALTER TABLE deployment_targets ADD COLUMN notifications BIGINT NOT NULL DEFAULT 0;
UPDATE deployment_targets SET notifications = attempts;
