FROM node:20-alpine AS base
ENV NODE_ENV production
WORKDIR /usr/src/app

FROM base AS deps
COPY package.json package-lock.json* ./
RUN npm ci --omit=dev

FROM base AS build
COPY --from=deps /usr/src/app/node_modules ./node_modules
COPY . .
RUN npm run build

FROM base AS runner
ENV PORT=3000 HOSTNAME="0.0.0.0"
COPY --from=build --chown=node:node /usr/src/app/dist ./dist
COPY --from=deps /usr/src/app/node_modules ./node_modules
USER node
EXPOSE ${PORT}
STOPSIGNAL SIGTERM
CMD ["node", "dist/server.js"]
